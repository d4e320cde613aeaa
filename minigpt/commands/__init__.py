"""One module per ``minigpt`` subcommand. Each defines HELP, ``add_arguments(parser)`` and ``run(args) -> int``."""
