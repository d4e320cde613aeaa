"""The ``minigpt`` command. ``dispatch.py`` dispatches; each subcommand is one module here
(``train.py``, ``generate.py``, ``eval.py``, ``gradcheck.py``, ``bench/``), each defining HELP,
``add_arguments(parser)`` and ``run(args) -> int``; ``help.py`` formats their help."""

from minigpt.cli.dispatch import main  # noqa: F401
