"""The teacher generator against a local OpenAI-compatible endpoint served by the test: its outputs go
through the same gate as the strategies' (format, distinct agreeing paths, the verified answer)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pr1d.data.builder import DropReason, build_dataset, build_record
from pr1d.data.teacher import TeacherGenerator

TASK = {"id": "t1", "question": "Ana has 23 apples and buys 45 more. How many now?", "answer": "68",
        "tier": "easy", "steps": ["23 + 45 = 68"]}

GOOD = ("<Parallel><Path>23 + 45 = 68\nSo the result is 68.</Path><Path>45 + 23 = 68\nSo the result is 68."
        "</Path><Summary>Both paths give 68.</Summary></Parallel>\nFinal Answer: 68")
SAME = ("<Parallel><Path>23 + 45 = 68</Path><Path>23 + 45 = 68</Path><Summary>68</Summary></Parallel>\n"
        "Final Answer: 68")
WRONG = GOOD.replace("68", "69")
BROKEN = "<Parallel><Path>23 + 45 = 68</Path><Summary>68</Summary>\nFinal Answer: 68"


class FakeOpenAI(BaseHTTPRequestHandler):
    replies: list[str] = []
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.seen.append({"body": body, "auth": self.headers.get("Authorization")})
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            return
        choices = [{"index": i, "message": {"role": "assistant", "content": t}} for i, t in enumerate(self.replies)]
        out = json.dumps({"id": "x", "object": "chat.completion", "choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


@pytest.fixture
def teacher_url():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    FakeOpenAI.seen = []
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.mark.parametrize(
    ("replies", "code"),
    [([GOOD], None), ([SAME], "paths_identical"), ([WRONG], "paths_disagree"), ([BROKEN], "format_invalid"),
     ([BROKEN, GOOD], None)],
)
def test_teacher_outputs_pass_the_same_gate(teacher_url, monkeypatch, replies, code):
    monkeypatch.setenv("PR1_TEACHER_API_KEY", "k-123")
    FakeOpenAI.replies = replies
    gen = TeacherGenerator(teacher_url, "teacher-7b", samples=len(replies))
    try:
        if code is None:
            rec = build_record(TASK, branches=2, generator=gen)
            assert rec["completion"] == GOOD and rec["paths"] == 2
        else:
            with pytest.raises(DropReason) as ei:
                build_record(TASK, branches=2, generator=gen)
            assert ei.value.code == code
    finally:
        gen.close()
    req = FakeOpenAI.seen[-1]
    assert req["auth"] == "Bearer k-123" and req["body"]["model"] == "teacher-7b"
    assert req["body"]["n"] == len(replies) and "<Parallel>" in req["body"]["messages"][0]["content"]


def test_unreachable_teacher_is_a_counted_drop():
    gen = TeacherGenerator("http://127.0.0.1:9", "t", timeout_s=2)
    entry = {"task_id": "t1", "agent_id": "a", "question": TASK["question"],
             "transcript": "23 + 45 = 68\nFinal Answer: 68", "final_answer": "68", "score": 0.95, "tier": "easy"}
    records, stats = build_dataset([entry], generator=gen)
    gen.close()
    assert records == [] and stats["drops"]["teacher_error"] == 1
