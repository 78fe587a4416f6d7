"""How a long CLI command becomes interruptible (docs/operations.md).

    with interruptible("cross-validation of msfanet", resume_command(add=["--resume"])):
        run_cv(...)

SIGINT/SIGTERM inside the block: the library's ``finally`` blocks stop the work and the Ray
session (``distmsfa.runtime``), then one line ``interrupted (SIGINT): ... stopped; resume
with: <command>`` goes to stderr and the command exits 130 (SIGINT) or 143 (SIGTERM).
"""
from __future__ import annotations

import os
import shlex
import sys
from contextlib import contextmanager
from typing import Iterator, Mapping, Optional, Sequence

import typer

from distmsfa.runtime import InterruptGuard


def program() -> list[str]:
    """How this process was started, as a command a user can type: ``distmsfa`` when run
    through the installed script, else ``<python> -m distmsfa``."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv else ""
    if argv0 in ("distmsfa", "distmsfa.exe"):
        return ["distmsfa"]
    return [sys.executable, "-m", "distmsfa"]


def resume_command(*, add: Sequence[str] = (), set_options: Optional[Mapping[str, str]] = None,
                   aliases: Optional[Mapping[str, Sequence[str]]] = None, argv: Optional[Sequence[str]] = None) -> str:
    """The command line that was run (``sys.argv``), with ``set_options`` given the values
    (replaced where present, appended where not; ``aliases`` maps an option to its other
    spellings, e.g. ``{"--out": ["-o"]}``) and the flags in ``add`` appended once."""
    args = list(sys.argv[1:] if argv is None else argv)
    for opt, value in (set_options or {}).items():
        names = {opt, *((aliases or {}).get(opt, ()))}
        out: list[str] = []
        i = 0
        while i < len(args):
            a = args[i]
            if a in names:
                i += 2
                continue
            if any(a.startswith(n + "=") for n in names if n.startswith("--")):
                i += 1
                continue
            out.append(a)
            i += 1
        args = out + [opt, str(value)]
    for flag in add:
        if flag not in args:
            args.append(flag)
    return shlex.join(program() + args)


@contextmanager
def interruptible(what: str, resume: Optional[str], *, exit_process: bool = True) -> Iterator[InterruptGuard]:
    """Run the body under an :class:`~distmsfa.runtime.InterruptGuard`; on SIGINT/SIGTERM
    print its one line and exit 130/143 (whatever exception the interrupted work ended with):
    at once (``os._exit``) by default, through ``typer.Exit`` with ``exit_process=False``."""
    guard = InterruptGuard(what, resume)
    try:
        with guard:
            yield guard
    except (KeyboardInterrupt, Exception, typer.Exit) as exc:
        if not guard.interrupted:
            if isinstance(exc, KeyboardInterrupt):  # Ctrl-C before the guard saw it: same answer
                guard.signum = 2
            else:
                raise
        guard.print_message()
        if exit_process:
            # The work is stopped and its Ray session shut down; what is left is interpreter
            # teardown (joining Ray's and torch's threads, C++ destructors), which took 15 s
            # and more on a loaded machine.  Nothing of ours is left to flush.
            guard.exit_now()
        raise typer.Exit(guard.exit_code) from None
