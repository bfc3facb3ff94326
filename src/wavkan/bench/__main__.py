from . import main

raise SystemExit(main(prog="python -m wavkan.bench"))
