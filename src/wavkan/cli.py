"""The ``wavkan`` command (``wavkan train``, ``evaluate``, ``bench``, ``plot``) and the
argument types its subcommands share.

Each subcommand owns its options (``wavkan train --help``); this module only dispatches, and
imports a subcommand's module when it runs, so ``wavkan bench`` loads nothing of training. It
imports nothing of wavkan at import time.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

__all__ = ["main", "COMMANDS", "positive_int", "int_list"]

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
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest, prog=f"wavkan {command}") or 0)


if __name__ == "__main__":
    raise SystemExit(main())
