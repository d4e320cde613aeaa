"""The help formatter every ``minigpt`` subcommand uses."""

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """Wraps the description, keeps the examples' lines as written; defaults are in each help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return text
        return super()._fill_text(text, width, indent)
