"""``minigpt judge``: score instruction responses 0-100 with an Ollama-compatible chat model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from minigpt.cli.help import HelpFormatter

HELP = ("Score the responses of 'minigpt instruct' (instruction-data-with-response.json) 0-100 with "
        "a judge model behind an Ollama-compatible /api/chat endpoint, as the book's chapter 7 does "
        "(llama3, seed 123, temperature 0, num_ctx 2048); prints the mean.")

EXAMPLES = """\
examples:
  ollama serve & ollama pull llama3
  minigpt judge runs/instruct/instruction-data-with-response.json
  minigpt judge responses.json --url http://otherhost:11434/api/chat --judge-model llama3.1
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from minigpt.inference.judge import DEFAULT_MODEL, DEFAULT_URL

    p.formatter_class = HelpFormatter
    p.epilog = EXAMPLES
    p.add_argument("file", help="a JSON list of entries with instruction, input, output and the "
                                "response to score")
    p.add_argument("--key", default="model_response", help="the field holding the response")
    p.add_argument("--url", default=DEFAULT_URL, help="the judge's chat endpoint")
    p.add_argument("--judge-model", default=DEFAULT_MODEL, metavar="NAME",
                   help="the judge model's name on the server")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds to wait for each answer")


def run(args: argparse.Namespace) -> int:
    from minigpt.inference.judge import JudgeUnavailableError, score_responses

    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"no responses file at {path}; 'minigpt instruct' writes "
                                "instruction-data-with-response.json into its run directory")
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty JSON list of entries")
    try:
        res = score_responses(rows, args.key, args.judge_model, args.url, args.timeout)
    except JudgeUnavailableError as e:
        print(f"minigpt judge: {e}")
        return 2
    print(f"number of scores: {len(res.scores)} of {len(rows)}"
          + (f" ({len(res.unparsed)} replies were not an integer 0-100)" if res.unparsed else ""))
    print(f"average score: {res.mean:.2f}")
    return 0
