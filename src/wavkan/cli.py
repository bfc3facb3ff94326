"""The ``wavkan`` command (``wavkan train``, ``evaluate``, ``bench``, ``plot``) and the
argument types its subcommands share.

Each subcommand owns its options (``wavkan train --help``); this module only dispatches, and
imports a subcommand's module when it runs, so ``wavkan bench`` loads nothing of training. It
imports nothing of wavkan at import time.

``run`` is the command (``python -m wavkan``, the ``wavkan`` script): ``main``, then
``exit_now``, which ends the process without the interpreter's teardown once the command is
done. ``main`` itself returns, for callers in a process that goes on.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
from typing import NoReturn, Optional, Sequence

__all__ = ["main", "run", "exit_now", "COMMANDS", "positive_int", "int_list"]

# name -> (module, help). Every module has main(argv, prog) -> int.
COMMANDS = {
    "train": ("wavkan.app.train", "train a Wav-KAN classifier (defaults: the paper's MNIST protocol)"),
    "evaluate": ("wavkan.app.evaluate", "score a checkpoint on a test set"),
    "bench": ("wavkan.bench", "benchmark the Wav-KAN backends"),
    "plot": ("wavkan.app.plot", "draw a checkpoint's learned edge functions"),
}


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def int_list(text: str) -> list:
    """argparse type: comma-separated ints such as 784,32,10. Every field must be an int
    ("784,,10" is an error, not [784, 10]); the caller checks the values themselves."""
    try:
        return [int(w) for w in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 784,32,10, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="wavkan", description="Wavelet Kolmogorov-Arnold Networks (Wav-KAN).")
    p.add_argument("--version", action="version", version=f"wavkan {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _parser().parse_args(argv)  # prints help, the version, or a usage error, and exits
        return 2
    command, rest = argv[0], argv[1:]
    try:  # Ctrl-C while the command's modules load (a second or more): a line, not a traceback
        module = importlib.import_module(COMMANDS[command][0])
    except KeyboardInterrupt:
        print(f"\nwavkan {command}: interrupted while starting", file=sys.stderr)
        return 130
    return int(module.main(rest, prog=f"wavkan {command}") or 0)


def exit_now(code: int) -> NoReturn:
    """End the process with exit status ``code``: the atexit handlers run (Inductor stops its
    compile workers there), the output is flushed, and then ``os._exit`` skips the rest of the
    interpreter's teardown, which after ``torch.compile`` spends over a second collecting
    Dynamo's and Inductor's objects one by one for nothing. Only for the end of a command whose
    files are all closed and whose threads have ended (``wavkan``'s)."""
    run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_functions is None:  # not CPython: the ordinary exit
        raise SystemExit(code)
    try:
        run_exit_functions()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed, or a broken pipe: nothing more to say
                pass
        os._exit(code)


def run() -> NoReturn:
    """The ``wavkan`` command: ``main()`` on ``sys.argv``, then ``exit_now`` with its status
    (``--help`` and usage errors exit the ordinary way, from argparse)."""
    exit_now(main())


if __name__ == "__main__":
    run()
