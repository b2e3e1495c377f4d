// Forms marked data-submit-once send once: a second click while the first submit is on its
// way does nothing, and the button says what is happening. The server is idempotent anyway
// (the form carries its own key); this only spares the customer a confusing double wait.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-submit-once")) return;
  if (form.dataset.submitted === "true") {
    event.preventDefault();
    return;
  }
  form.dataset.submitted = "true";
  const button = event.submitter || form.querySelector("button[type=submit]");
  if (button) {
    button.setAttribute("aria-disabled", "true");
    if (button.dataset.busyText) button.textContent = button.dataset.busyText;
  }
  form.setAttribute("aria-busy", "true");
});
// Coming back to the page from the history cache: let the form be used again.
window.addEventListener("pageshow", (event) => {
  if (!event.persisted) return;
  for (const form of document.querySelectorAll("form[data-submit-once]")) {
    delete form.dataset.submitted;
    form.removeAttribute("aria-busy");
  }
});
