"""The one exception type for failures a user can cause and fix.

Scripts print its message as a single line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input or environment, with the fix in its message."""

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception in the main thread, so cleanup runs as for Ctrl-C."""

    exit_code = 143
