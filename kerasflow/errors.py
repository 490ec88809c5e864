"""The one exception type for failures a user can cause and fix.

Scripts print its message as a single line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno

FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # a full disk, `ulimit -f`, a quota
# the same, as a database reports it through MLflow (sqlite; PostgreSQL's "could not extend file")
FULL_TEXTS = ("database or disk is full", "No space left on device", "Disk quota exceeded",
              "could not extend file")


class UserError(Exception):
    """A problem in the user's input or environment, with the fix in its message."""

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (an SSH session dropped without tmux) turned into an exception in the main
    thread, so cleanup runs as for Ctrl-C and the run ends KILLED; the exit code is the shell's 128+N."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def disk_full(exc: BaseException) -> str:
    """What says `exc` is a full disk (or quota, or file-size limit), raised directly or wrapped by
    MLflow ("No space left on device", "database or disk is full", ...); "" when it is not one."""
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return exc.strerror or "disk full"
    return next((text for text in FULL_TEXTS if text in str(exc)), "")
