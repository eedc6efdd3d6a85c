"""A local OpenAI-compatible judge for the local scale and the tests: a real HTTP server on
127.0.0.1 answering `POST /v1/chat/completions` with a deterministic rubric.

The rubric is not a judge of quality: it rates a reply by how many distinct words it has
(1 + one point per three, at most 10) and two points more when it contains the last word of a
given reference answer; pairwise, the reply with the higher rubric score wins. Its scores check
the plumbing (generation, judging, parsing, caching, metrics, bills), and every report of a
local run says so. It can also misbehave on purpose (`Faults`): answer 429 or 500 to the first
calls, stall past the client's timeout, or reply without a verdict.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RUBRIC_NAME = "local-rubric"
_REPLY = re.compile(
    r"\[Assistant( [AB])?, turn (\d+)\]\n(.*?)(?=\n\n\[|\n\nGrade|\n\nCompare|\Z)", re.S
)
_REF = re.compile(r"\[Reference answer to turn \d+\]\n(.*?)\n\n", re.S)


def rubric(reply: str, reference: str | None) -> int:
    words = {w.lower() for w in re.findall(r"[A-Za-z0-9]+", reply)}
    score = min(10, 1 + len(words) // 3)
    if reference:
        ref_words = re.findall(r"[A-Za-z0-9]+", reference)
        if ref_words and ref_words[-1].lower() in words:
            score = min(10, score + 2)
    return score


def judge_text(user: str) -> str:
    """The rubric's reply to one judge prompt (single or pairwise)."""
    ref_m = _REF.search(user)
    ref = ref_m.group(1) if ref_m else None
    replies = _REPLY.findall(user)
    turn = max((int(t) for _, t, _ in replies), default=1)
    last = {label.strip() or "-": text for label, t, text in replies if int(t) == turn}
    if "A" in last and "B" in last:
        a, b = rubric(last["A"], ref), rubric(last["B"], ref)
        verdict = "[[A]]" if a > b else "[[B]]" if b > a else "[[C]]"
        return f"Rubric scores A {a}, B {b} (a plumbing check, not a judgment).\n{verdict}"
    score = rubric(last.get("-", ""), ref)
    return f"Rubric score (a plumbing check, not a judgment).\nRating: [[{score}]]"


@dataclass
class Faults:
    status_first: int = 0
    """Answer the first `status_first` calls with `status` (429: rate limited; 500)."""
    status: int = 429
    stall_first: int = 0
    """Stall the first calls for `stall_s` before answering (past a client's timeout)."""
    stall_s: float = 0.0
    no_verdict: bool = False
    """Reply with text that has no rating or verdict."""


@dataclass
class JudgeServer:
    """`with JudgeServer() as s: s.url` (http://127.0.0.1:<port>/v1)."""

    faults: Faults = field(default_factory=Faults)
    calls: int = 0
    authorizations: list[str] = field(default_factory=list)
    """The Authorization headers received (tests check the key arrives there)."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        # serve_forever checks for shutdown every poll_interval (0.5 s by default): a stage's
        # judge would idle that long at its end
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: no request lines on stderr
                return

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.calls += 1
                    n = server.calls
                    server.authorizations.append(self.headers.get("Authorization", ""))
                f = server.faults
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": "not found"})
                if n <= f.status_first:
                    return self._send(f.status, {"error": "injected fault"})
                if n <= f.stall_first:
                    time.sleep(f.stall_s)
                user = next((m["content"] for m in reversed(body.get("messages", []))
                             if m.get("role") == "user"), "")  # fmt: skip
                text = "I cannot decide." if f.no_verdict else judge_text(user)
                prompt_tokens = sum(len(m.get("content", "").split()) for m in body["messages"])
                self._send(200, {
                    "id": f"judge-{n}", "object": "chat.completion",
                    "model": body.get("model", RUBRIC_NAME),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": prompt_tokens,
                              "completion_tokens": len(text.split())},
                })  # fmt: skip

            def _send(self, status: int, payload: dict) -> None:
                raw = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to answer

        return Handler
