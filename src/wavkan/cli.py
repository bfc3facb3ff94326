"""The ``wavkan`` command: ``wavkan train``, ``wavkan evaluate`` and ``wavkan bench``.

Each subcommand owns its options (``wavkan train --help``); this module only dispatches, and
imports a subcommand's module when it runs, so ``wavkan bench`` loads nothing of training.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

__all__ = ["main", "COMMANDS"]

# name -> (module, help). Every module has main(argv, prog) -> int.
COMMANDS = {
    "train": ("wavkan.train", "train a Wav-KAN classifier (defaults: the paper's MNIST protocol)"),
    "evaluate": ("wavkan.evaluate", "score a checkpoint on a test set"),
    "bench": ("wavkan.bench", "benchmark the Wav-KAN backends"),
}


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
