"""An email backend for the fault tests' workers: the file backend, except that one send stalls
when the test asks for it, so that the test can kill the worker inside that send.

The test creates `$SLOW_MAIL_DIR/stall`; the first send to find it renames it to
`stalled-<pid>` (atomic: only one send claims it), sleeps SLOW_MAIL_SECONDS, then writes the
email as usual; with SLOW_MAIL_AFTER set it writes the email first, then sleeps (the mail
server has accepted it, the sender has not yet recorded so). Every other send writes at once.
"""

import os
import time
from pathlib import Path

from django.core.mail.backends.filebased import EmailBackend as FileEmailBackend


class EmailBackend(FileEmailBackend):
    def send_messages(self, email_messages):
        control = os.environ.get("SLOW_MAIL_DIR")
        if control:
            try:
                os.rename(Path(control) / "stall", Path(control) / f"stalled-{os.getpid()}")
            except FileNotFoundError:
                pass
            else:
                if os.environ.get("SLOW_MAIL_AFTER"):
                    sent = super().send_messages(email_messages)
                    time.sleep(float(os.environ.get("SLOW_MAIL_SECONDS", "60")))
                    return sent
                time.sleep(float(os.environ.get("SLOW_MAIL_SECONDS", "60")))
        return super().send_messages(email_messages)
