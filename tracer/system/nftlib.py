"""`nft` in-process through libnftables (Debian's python3-nftables), for `system.run`.

The same library the nft command is a thin front end of: the command line joined with spaces (as
nft's main() does) or the `-f -` input is run by nft_run_cmd_from_buffer, one transaction per
batch, with the output flags the options ask for; stdout, stderr and the exit status are what
the command would give (errors lack the `/dev/stdin:L:C:` location prefix nft adds for a file).
A fresh context per call, created in the calling thread's network namespace (its netlink socket
is opened there), freed after: nothing is cached between calls, let alone between runs.

Used only when the `nft` that PATH finds is the system's own (a wrapper or a fake earlier on
PATH runs as a command, as before), when the library is importable, and for the options below;
anything else runs the command.
"""
from __future__ import annotations

import os
import shutil
import threading
from typing import Any, Optional

SYSTEM_NFT = ("/usr/sbin/nft", "/sbin/nft")
# nft option -> libnftables output flag (nftables.Nftables.output_flags names)
FLAGS = {"-a": "handle", "--handle": "handle", "-j": "json", "--json": "json", "-s": "stateless", "--stateless": "stateless",
         "-t": "terse", "--terse": "terse"}
_LOCK = threading.Lock()  # libnftables 1.0.x keeps some global state: one call at a time
_lib: Any = None


def _module() -> Any:
    global _lib
    if _lib is None:
        try:
            import nftables
        except ImportError:
            _lib = False
        else:
            _lib = nftables
    return _lib


def usable(exe: str) -> bool:
    real = os.path.realpath(exe)
    return any(os.path.exists(p) and os.path.realpath(p) == real for p in SYSTEM_NFT) and bool(_module())


def run(argv: list[str], input: Optional[str]) -> Optional[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of `nft ARGS` run in-process, or None when it must run as a command."""
    exe = shutil.which(argv[0])
    if exe is None or not usable(exe):
        return None
    flags: set[str] = set()
    args = argv[1:]
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt in FLAGS:
            flags.add(FLAGS[opt])
        elif opt == "-f" and args[:1] == ["-"] and input is not None:
            args.pop(0)
            if args:
                return None
            args = [input]
            break
        else:
            return None  # --version, -c, -e, ...: the command's own business
    if not args or (input is not None and args != [input]):
        return None
    text = args[0] if input is not None else " ".join(args)
    with _LOCK:
        nft = _module().Nftables()
        try:
            for name in flags:
                getattr(nft, f"set_{name}_output")(True)
            rc, out, err = nft.cmd(text)
        finally:
            del nft
    return (0 if rc == 0 else 1), out, err
