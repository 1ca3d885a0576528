"""A fake OpenAI-compatible chat server on 127.0.0.1 for the label tests, with fault injection.

:class:`FakeLLM` implements ``POST /v1/chat/completions`` with ``http.server`` in a thread.
It answers from a script (in order) and then from a plausible default: an explanation naming
the words of the examples it was shown, detection answers that say 1 for examples containing a
word of the explanation, and simulation answers listing those words. A script item is a text
(the answer), a callable (request body -> answer), a status code (an error reply) or a
:class:`Raw` reply (any status, headers and body: HTML with status 200, 429 with Retry-After).
:class:`Listener` is a bare TCP server that records who connects (a stand-in proxy).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class Listener:
    """A TCP server on 127.0.0.1 that accepts, records and drops every connection."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections: list[bytes] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.5)
                try:
                    self.connections.append(conn.recv(4096))
                except TimeoutError:
                    self.connections.append(b"")

    def close(self):
        self._stop.set()
        self.thread.join()
        self.sock.close()


class Raw(NamedTuple):
    """A scripted reply sent as is."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


def default_answer(request: dict) -> str:
    """Explain: name the marked tokens; detect: 1 where an example contains a named word;
    simulate: the excerpt's words that are words of the explanation, at level 8."""
    system, user = request["messages"][0]["content"], request["messages"][-1]["content"]
    if "[EXPLANATION]" in system:
        marked = re.findall(r"<<([^>]+)>>", user) or ["nothing"]
        return f"The examples share a token.\n[EXPLANATION]: {marked[0].strip().lower()}"
    if "word: level" in system:
        words = set(re.match(r"Explanation: (.*)", user).group(1).lower().split())
        excerpt = re.search(r"^Excerpt: (.*)$", user, re.M).group(1).lower().split()
        hits = [w for w in dict.fromkeys(excerpt) if w in words]
        return "\n".join(f"{w}: 8" for w in hits) or "none"
    words = re.match(r"Explanation: (.*)", user).group(1).lower().split()
    lines = re.findall(r"^Example \d+: (.*)$", user, re.M)
    if "Excerpts:" in user:  # fuzzing: judge the marked tokens only
        lines = [" ".join(re.findall(r"<<([^>]+)>>", line)) for line in lines]
    return str([int(any(w in line.lower() for w in words)) for line in lines])


class FakeLLM:
    """A scripted OpenAI-compatible chat server; ``requests`` records every request body."""

    def __init__(self, model: str = "fake-model"):
        self.model, self.script, self.requests = model, [], []
        self.sent_at: list[float] = []  # when each Raw reply went out
        self.logprobs = None  # content list to attach when the request asks for log-probs
        self.fail_if = None  # predicate on the request body: answer 500 when it holds
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, **body})
                if fake.fail_if is not None and fake.fail_if(body):
                    return self._send(500, {"error": {"message": "scripted failure"}})
                item = fake.script.pop(0) if fake.script else default_answer
                if isinstance(item, Raw):
                    return self._raw(item)
                if isinstance(item, int):
                    return self._send(item, {"error": {"message": "scripted failure"}})
                content = item(body) if callable(item) else item
                self._send(200, fake.completion(content, body))

            def _raw(self, item: Raw):
                fake.sent_at.append(time.monotonic())
                self.send_response(item.status)
                for key, value in item.headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(item.body)))
                self.end_headers()
                self.wfile.write(item.body)

            def _send(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def completion(self, content: str, body: dict) -> dict:
        choice = {"index": 0, "message": {"role": "assistant", "content": content}}
        choice |= {"finish_reason": "stop", "logprobs": None}
        if body.get("logprobs") and self.logprobs is not None:
            choice["logprobs"] = {"content": self.logprobs}
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def close(self):
        self.server.shutdown()
        self.server.server_close()
