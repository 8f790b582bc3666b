"""`dynamo chat` driven through a pseudo-terminal against a real `dynamo serve`: it streams each
reply, keeps the conversation (the second turn's prompt holds the first), forgets it on
/reset, and reports a server it cannot reach or that goes away mid-reply."""

from __future__ import annotations

import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.timeout(120)
DYNAMO = [sys.executable, "-m", "dynamo_core.cli.main"]


class Terminal:
    """A child process on a pty, read as a user sees it."""

    def __init__(self, args: list[str]):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.seen)
            if match:
                self.seen = self.seen[match.end():]
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} in {self.seen!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096).decode(errors="replace").replace("\r\n", "\n")
                except OSError:  # the child closed the terminal
                    raise AssertionError(f"no {pattern!r} in {self.seen!r}; exited {self.proc.poll()}") from None

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=10)
        finally:
            os.close(self.master)


def test_chat_streams_replies_and_keeps_the_conversation(cluster):
    _, base = cluster.serve("--engine", "echo", workers=1)
    term = Terminal(DYNAMO + ["chat", "--url", f"{base}/v1", "--usage"])
    try:
        term.expect(r"chatting with echo at .*\n> ")
        term.send("hello there")
        first = term.expect(r"hello there\n\[(\d+) prompt tokens, (\d+) completion tokens\]\n> ")
        term.send("again")
        second = term.expect(r"again\n\[(\d+) prompt tokens, \d+ completion tokens\]\n> ")
        # The second turn was sent with the first turn and its reply before it.
        assert int(second.group(1)) > int(first.group(1)) + int(first.group(2))
        term.send("/reset")
        term.expect(r"forgotten\)\n> ")
        term.send("again")
        fresh = term.expect(r"again\n\[(\d+) prompt tokens")
        assert int(fresh.group(1)) < int(second.group(1))
        term.send("/exit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


def test_chat_prints_a_reply_as_its_tokens_arrive(cluster):
    # A slowed mocker: a token every few tens of milliseconds, so a streamed reply shows up in
    # pieces, and the first piece comes well before the reply is over.
    _, base = cluster.serve("--speedup-ratio", "0.05", workers=1)
    term = Terminal(DYNAMO + ["chat", "--url", f"{base}/v1", "--max-tokens", "8", "--usage"])
    try:
        term.expect(r"\n> ")
        term.send("go")
        pieces: list[tuple[float, str]] = []
        deadline = time.monotonic() + 30
        while "completion tokens]" not in "".join(p for _, p in pieces) and time.monotonic() < deadline:
            ready, _, _ = select.select([term.master], [], [], 1)
            if ready:
                pieces.append((time.monotonic(), os.read(term.master, 4096).decode(errors="replace")))
        assert "8 completion tokens]" in "".join(p for _, p in pieces), pieces
        text_pieces = [(t, p) for t, p in pieces if p.strip() and "prompt tokens" not in p and p.strip() != "go"]
        assert len(text_pieces) >= 3, pieces
        assert pieces[-1][0] - text_pieces[0][0] > 0.1, pieces
        term.send("/exit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


def test_chat_says_when_it_cannot_reach_the_server():
    result = subprocess.run(DYNAMO + ["chat", "--url", "http://127.0.0.1:9/v1"], input="", capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "cannot reach http://127.0.0.1:9/v1" in result.stderr, result.stderr


def test_chat_reports_a_server_that_goes_away_mid_reply(cluster):
    # A frontend started apart from its worker, so it can be killed alone while it streams.
    frontend, base = cluster.frontend()
    cluster.start("worker", "--speedup-ratio", "0.05")
    cluster.wait_for_workers(base, 1)
    term = Terminal(DYNAMO + ["chat", "--url", f"{base}/v1", "--max-tokens", "400"])
    try:
        term.expect(r"\n> ")
        term.send("go")
        term.expect(r"go\n\s*\S")  # the reply has begun (it may open with a space)
        frontend.proc.kill()
        failure = term.expect(r"\[error: (.*)\]\n> ")
        assert f"the connection to {base}/v1 broke mid-reply" in failure.group(1), failure.group(1)
        assert "Traceback" not in term.seen
        term.send("/exit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


def _server_that_resets_mid_stream(listener: socket.socket) -> None:
    """Answer /models, then start a chunked SSE reply and reset the connection in its middle."""
    for _ in range(2):
        conn, _ = listener.accept()
        request = conn.recv(65536)
        if b"/models" in request.split(b"\r\n", 1)[0]:
            body = b'{"object": "list", "data": [{"id": "m"}]}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
            conn.close()
            continue
        event = b'data: {"choices": [{"delta": {"content": "partial"}}]}\n\n'
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n" % (len(event), event) + b"40\r\ndata: {")
        time.sleep(0.3)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
        conn.close()


def test_chat_reports_a_connection_reset_mid_reply_without_a_traceback():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        threading.Thread(target=_server_that_resets_mid_stream, args=(listener,), daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        result = subprocess.run(DYNAMO + ["chat", "--url", url], input="go\n", capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert "partial" in result.stdout
    assert f"[error: the connection to {url} broke mid-reply (" in result.stdout, result.stdout
