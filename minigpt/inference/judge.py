"""A judge for instruction responses: a 0-100 score from an Ollama-compatible chat endpoint.

The book's chapter 7 (``ollama_evaluate.py``) asks Llama 3 through Ollama's ``/api/chat``:

    POST http://localhost:11434/api/chat
    {"model": "llama3", "messages": [{"role": "user", "content": PROMPT}],
     "options": {"seed": 123, "temperature": 0, "num_ctx": 2048}}

and reads the streamed answer: one JSON object per line, each with ``message.content``, to be
joined. PROMPT gives the prompt in the Alpaca template, the reference output and the model's
response, and asks for an integer 0-100 only. A reply that is not an integer is skipped (and
counted), as the book does. Only the standard library is used (``urllib``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from minigpt.training.instruction_data import format_input

DEFAULT_URL = "http://localhost:11434/api/chat"
DEFAULT_MODEL = "llama3"
OPTIONS = {"seed": 123, "temperature": 0, "num_ctx": 2048}


class JudgeUnavailableError(ConnectionError):
    """No server answered at the judge's URL (or it answered with an error)."""


def judge_prompt(entry: dict, key: str = "model_response") -> str:
    """The book's scoring prompt for one entry."""
    return (f"Given the input `{format_input(entry)}` and correct output `{entry['output']}`, "
            f"score the model response `{entry[key]}` on a scale from 0 to 100, where 100 is the "
            "best score. Respond with the integer number only.")


def query_model(prompt: str, model: str = DEFAULT_MODEL, url: str = DEFAULT_URL,
                timeout: float = 120.0) -> str:
    """The text of the chat model's answer (the streamed lines' ``message.content`` joined)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                       "options": OPTIONS}).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            parts = []
            for line in response:
                line = line.strip()
                if line:
                    parts.append(json.loads(line.decode("utf-8")).get("message", {})
                                 .get("content", ""))
            return "".join(parts)
    except urllib.error.HTTPError as e:
        raise JudgeUnavailableError(f"the judge at {url} answered HTTP {e.code} ({e.reason}); is "
                                    f"the model {model!r} pulled? (ollama pull {model})") from e
    except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise JudgeUnavailableError(f"no judge server answered at {url} ({reason}); start one "
                                    f"(ollama serve; ollama pull {model}) or give --url") from e
    except json.JSONDecodeError as e:
        raise JudgeUnavailableError(f"the server at {url} did not answer with Ollama's JSON lines "
                                    f"({e.msg}); is it an Ollama-compatible /api/chat endpoint?") from e


@dataclass
class JudgeResult:
    scores: list[int] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)     # replies that were not an integer 0-100

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else float("nan")


def score_responses(rows: Sequence[dict], key: str = "model_response", model: str = DEFAULT_MODEL,
                    url: str = DEFAULT_URL, timeout: float = 120.0,
                    progress: Callable[[int, int], None] | None = None) -> JudgeResult:
    """The book's ``generate_model_scores``: one score per row; the mean over the parsed ones."""
    res = JudgeResult()
    for i, entry in enumerate(rows):
        if key not in entry:
            raise ValueError(f"entry {i} has no {key!r}: score a file written by 'minigpt instruct' "
                             "(instruction-data-with-response.json) or name the key with --key")
        reply = query_model(judge_prompt(entry, key), model, url, timeout).strip()
        try:
            score = int(reply)
        except ValueError:
            score = None
        if score is None or not 0 <= score <= 100:
            res.unparsed.append(reply)
        else:
            res.scores.append(score)
        if progress is not None:
            progress(i + 1, len(rows))
    return res
