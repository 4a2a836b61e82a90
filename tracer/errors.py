"""The one exception family fwtrace reports to users, and the exit statuses it maps to."""
from __future__ import annotations

import enum
from typing import Optional


class ExitStatus(enum.IntEnum):
    OK = 0  # the probe reached the service
    BLOCKED = 1  # blocked or unanswered
    USAGE = 2  # bad command line
    ENVIRONMENT = 3  # not root, missing tool, unknown namespace, kernel cannot do it
    INTERNAL = 4  # a bug: an unexpected exception
    LEFTOVER = 5  # cleanup incomplete: something fwtrace changed is not as before the run (named in the report)
    SHADOW_COMMAND = 6  # what-if: the command failed inside the shadow
    BAD_BUNDLE = 7  # replay: not an fwtrace bundle, or one from a newer fwtrace
    SSH_UNREACHABLE = 8  # --from ssh://: the client host cannot be reached (or ssh failed otherwise)
    SSH_AUTH = 9  # --from ssh://: authentication or host-key verification failed
    REMOTE_PYTHON = 10  # --from ssh://: no python3 on the client host
    SERVICE_UNKNOWN = 11  # probe --service: neither /etc/services (or /etc/rpc) nor a listening process knows the name
    APP_PROTOCOL = 12  # --app ftp: the service does not speak the protocol (the report says what came back)
    INTERRUPTED = 130


class FwtraceError(Exception):
    """An error with a message for the user, a hint, and the exit status it maps to."""

    status = ExitStatus.INTERNAL

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class UsageError(FwtraceError):
    status = ExitStatus.USAGE


class EnvironmentProblem(FwtraceError):
    status = ExitStatus.ENVIRONMENT


class CommandError(EnvironmentProblem):
    """A system command failed; carries its argv, exit code and stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str, hint: Optional[str] = None) -> None:
        first = (stderr.strip().splitlines() or ["(no output)"])[0]
        super().__init__(f"`{' '.join(argv)}` failed with exit code {returncode}: {first}", hint)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP: raised once, wherever the main thread is, so every undo on the
    way out runs. `undo_errors`: None before the run's undo ran, else what it could not undo."""

    def __init__(self, signame: str, undo_errors: Optional[list[str]] = None, netns: Optional[str] = None,
                 run: bool = False) -> None:
        super().__init__(signame)
        self.signame = signame
        self.undo_errors = undo_errors
        self.netns = netns
        self.run = run  # raised again by `fwtrace probe` with what its undo did
