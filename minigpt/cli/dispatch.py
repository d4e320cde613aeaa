"""The ``minigpt`` command: a thin dispatcher; each subcommand lives in ``minigpt/cli/<name>.py``."""

from __future__ import annotations

import argparse
import importlib
import sys

# In the order ``minigpt --help`` lists them.
COMMANDS = ["train", "finetune", "classify", "instruct", "dpo", "judge", "generate", "eval",
            "gradcheck", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minigpt",
        description="GPT-2 from first principles in NumPy: train, generate, evaluate, "
        "check gradients, benchmark. Run 'minigpt COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"minigpt.cli.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        print(f"minigpt {args.command}: error: {e}", file=sys.stderr)
        return 2


