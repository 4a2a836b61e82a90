# The signals first: until then a SIGTERM or SIGHUP kills by the default action, and a SIGINT
# raises inside whatever import is running (tracer/system/console.py says why the handler only sets a flag).
from tracer.system.sigflag import take_signals

take_signals()

from tracer.cli import run  # noqa: E402

run()
