"""The one exception type for failures a user can cause and fix.

Scripts print its message as a single line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
