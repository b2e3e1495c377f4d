// The invoice's Print button (a script file rather than an onclick attribute: the
// Content-Security-Policy allows no inline script).
document.addEventListener("click", (event) => {
  if (event.target instanceof Element && event.target.closest("[data-print]")) {
    window.print();
  }
});
