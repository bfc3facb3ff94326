"""``python -m wavkan ...`` is the ``wavkan`` command."""

from .cli import main

raise SystemExit(main())
