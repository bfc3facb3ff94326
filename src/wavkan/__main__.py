"""``python -m wavkan ...`` is the ``wavkan`` command."""

from .cli import run

run()
