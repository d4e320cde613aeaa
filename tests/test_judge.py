"""The judge client against a fake Ollama server on 127.0.0.1 (http.server in a thread)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from minigpt.inference.judge import (
    JudgeUnavailableError,
    judge_prompt,
    query_model,
    score_responses,
)

ROWS = [{"instruction": "Name the capital of France.", "input": "", "output": "Paris.",
         "model_response": "The capital of France is Paris."},
        {"instruction": "Add the numbers.", "input": "2, 3", "output": "5",
         "model_response": "6"},
        {"instruction": "Say hi.", "input": "", "output": "Hi.", "model_response": "Hello."}]


@pytest.fixture
def fake_ollama():
    """A server that streams its reply in Ollama's JSON lines; replies[i] answers request i."""
    seen: list[dict] = []
    replies = ["85", "20", "I would say 70"]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "body": body,
                         "content_type": self.headers["Content-Type"]})
            if self.path != "/api/chat":
                self.send_error(404, "not found")
                return
            reply = replies[(len(seen) - 1) % len(replies)]
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()
            for piece in (reply[:1], reply[1:]):                 # streamed in two chunks
                self.wfile.write((json.dumps({"message": {"role": "assistant", "content": piece},
                                              "done": False}) + "\n").encode())
            self.wfile.write((json.dumps({"done": True}) + "\n").encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_books_request_and_streamed_reply(fake_ollama):
    base, seen = fake_ollama
    assert query_model("hello", model="llama3", url=base + "/api/chat") == "85"
    req = seen[0]
    assert req["path"] == "/api/chat" and req["content_type"] == "application/json"
    assert req["body"] == {"model": "llama3", "messages": [{"role": "user", "content": "hello"}],
                           "options": {"seed": 123, "temperature": 0, "num_ctx": 2048}}


def test_scores_mean_and_unparsed_replies(fake_ollama):
    base, seen = fake_ollama
    res = score_responses(ROWS, url=base + "/api/chat")
    assert res.scores == [85, 20] and res.unparsed == ["I would say 70"]
    assert res.mean == 52.5
    prompt = seen[1]["body"]["messages"][0]["content"]
    assert prompt == judge_prompt(ROWS[1])
    assert prompt.startswith("Given the input `Below is an instruction that describes a task.")
    assert "### Input:\n2, 3` and correct output `5`, score the model response `6` on a scale " \
           "from 0 to 100, where 100 is the best score. Respond with the integer number only." in prompt


def test_clear_message_when_no_server_answers():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                                    # nothing listens there now
    with pytest.raises(JudgeUnavailableError, match=f"no judge server answered at http://127.0.0.1:{port}"):
        query_model("x", url=f"http://127.0.0.1:{port}/api/chat", timeout=5)


def test_wrong_path_and_missing_key_are_explained(fake_ollama):
    base, _ = fake_ollama
    with pytest.raises(JudgeUnavailableError, match="HTTP 404"):
        query_model("x", url=base + "/api/generate")
    with pytest.raises(ValueError, match="no 'model_response'"):
        score_responses([{"instruction": "a", "input": "", "output": "b"}], url=base + "/api/chat")
