"""Handlers of `probe --app ftp`: the control session (tracer/system/ftpclient.py), kept on the run
until FtpClose or the run's end, and the conntrack helper facts of its connection."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from tracer import system
from tracer.diagnose import ftp
from tracer.errors import EnvironmentProblem
from tracer.plan import app_commands as ac

if TYPE_CHECKING:
    from tracer.pipeline.drive import RunState


def ftp_open(run: RunState, cmd: ac.FtpOpen) -> tuple[str, Optional[str], str, Optional[int]]:
    from tracer.system.ftpclient import FtpControl

    control = FtpControl()
    run.app = control
    run.stack.callback(control.close)  # closed at the run's end also when the pipeline fails
    greeting, error, login = control.open(cmd.netns, cmd.dst, cmd.port, cmd.user, cmd.password, cmd.wait)
    return greeting, error, login, control.sport


def ftp_command(run: RunState, cmd: ac.FtpCommand) -> str:
    return run.app.command(cmd.command) if run.app is not None else "failed: no session"


def ftp_helper(run: RunState, cmd: ac.FtpHelper) -> tuple[str, str, Optional[bool], Optional[str]]:
    from tracer.system.ftpclient import helper_facts

    try:
        listing = system.run(["conntrack", "-L", "-p", "tcp", "--sport", str(cmd.sport)], check=False).stdout
    except EnvironmentProblem:
        listing = ""
    helper, entry = ftp.conntrack_helper(listing, cmd.sport)
    module, auto = helper_facts(ftp.MODULE, ftp.AUTO_SYSCTL)
    return helper, entry, module, auto


def ftp_close(run: RunState, cmd: ac.FtpClose) -> None:
    if run.app is not None:
        run.app.close()
        run.app = None


HANDLERS: dict[type, Any] = {ac.FtpOpen: ftp_open, ac.FtpCommand: ftp_command, ac.FtpHelper: ftp_helper,
                             ac.FtpClose: ftp_close}
