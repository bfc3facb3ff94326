"""``python -m wavkan.train`` (and ``torchrun ... -m wavkan.train``): the training application's
entry point, kept at the package top so the documented commands stay short. The application
itself is ``wavkan.app.train``."""

if __name__ == "__main__":
    from .app.train import main
    from .cli import exit_now

    exit_now(main(prog="python -m wavkan.train"))
