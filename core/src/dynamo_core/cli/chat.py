"""`dynamo chat`: an interactive chat in the terminal, beside the HTTP mode.

It speaks OpenAI's chat API over HTTP to a local `dynamo serve` or to any OpenAI-compatible
URL, streams each reply token by token as it arrives, and keeps the conversation, sending it
whole on every turn (the server is stateless). Only the standard library is used, so the
command works wherever dynamo-core is installed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import msgspec

DEFAULT_URL = "http://127.0.0.1:8000/v1"
HELP = "/reset forgets the conversation, /exit (or Ctrl-D) quits"


# Lenient views of OpenAI's bodies: other servers add fields of their own, which are ignored.
class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None


class _Model(msgspec.Struct):
    id: str


class _Models(msgspec.Struct):
    data: list[_Model] = []


_chunk = msgspec.json.Decoder(_Chunk)
_models = msgspec.json.Decoder(_Models)


class ChatError(Exception):
    """The server refused or could not be reached; the message says which."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynamo chat",
        description="Chat in the terminal with a model served by `dynamo serve` or any OpenAI-compatible server. "
                    + HELP + ".",
    )
    parser.add_argument("--url", default=os.environ.get("DYN_CHAT_URL") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_URL,
                        help="the server's OpenAI base URL (env DYN_CHAT_URL or OPENAI_BASE_URL; default: %(default)s)")
    parser.add_argument("--model", default=None, help="model to chat with (default: the first one the server lists)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""),
                        help="sent as a Bearer token (env OPENAI_API_KEY; a local dynamo needs none)")
    parser.add_argument("--system", default=None, help="a system message that opens the conversation")
    parser.add_argument("--max-tokens", type=int, default=512, help="most tokens per reply (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the server's)")
    parser.add_argument("--usage", action="store_true", help="print each reply's prompt and completion token counts")
    return parser


class ChatClient:
    def __init__(self, url: str, api_key: str):
        self.url = url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def _open(self, path: str, body: dict | None = None, timeout: float = 600):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=self.headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise ChatError(f"{exc.code} from {self.url}{path}: {_error_message(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ChatError(f"cannot reach {self.url}: {reason} (is `dynamo serve` running? --url points elsewhere)") from None

    def first_model(self) -> str:
        with self._open("/models", timeout=30) as response:
            models = _models.decode(response.read()).data
        if not models:
            raise ChatError(f"{self.url} serves no model yet; start a worker or pass --model")
        return models[0].id

    def stream(self, body: dict) -> Iterator[_Chunk]:
        """The reply's chunks as they arrive (server-sent events).

        A stream that breaks or ends before `[DONE]` (the server died or was stopped, the
        network dropped) raises ChatError: the reply is cut short, not complete.
        """
        with self._open("/chat/completions", {**body, "stream": True}) as response:
            try:
                for raw in response:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    if data.startswith(b'{"error"'):
                        raise ChatError(_error_message(data))
                    yield _chunk.decode(data)
            except (OSError, http.client.HTTPException) as exc:
                raise ChatError(self._broke(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)) from None
            except msgspec.DecodeError as exc:
                raise ChatError(f"{self.url} sent a chunk that is not an OpenAI chat chunk: {exc}") from None
            raise ChatError(self._broke("the server closed it before [DONE]"))

    def _broke(self, how: str) -> str:
        return f"the connection to {self.url} broke mid-reply ({how}); is the server still running?"


def _error_message(body: bytes) -> str:
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:500]


def _reply(client: ChatClient, body: dict, out, dim: bool) -> tuple[str, _Usage | None]:
    """Stream one reply to `out`, token by token; return its text (reasoning left out)."""
    text: list[str] = []
    usage = None
    in_reasoning = False
    for chunk in client.stream(body):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            if choice.delta.reasoning_content:
                if not in_reasoning and dim:
                    out.write("\x1b[2m")
                in_reasoning = True
                out.write(choice.delta.reasoning_content)
            if choice.delta.content:
                if in_reasoning:
                    out.write("\x1b[0m\n" if dim else "\n")
                    in_reasoning = False
                out.write(choice.delta.content)
                text.append(choice.delta.content)
            out.flush()
    if in_reasoning and dim:
        out.write("\x1b[0m")
    out.write("\n")
    out.flush()
    return "".join(text), usage


def run(ns: argparse.Namespace, stdin=None, out=None) -> int:
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    client = ChatClient(ns.url, ns.api_key)
    try:
        model = ns.model or client.first_model()
    except ChatError as exc:
        print(f"dynamo chat: error: {exc}", file=sys.stderr)
        return 1
    opening = [{"role": "system", "content": ns.system}] if ns.system else []
    messages = list(opening)
    interactive = stdin.isatty()
    out.write(f"chatting with {model} at {client.url} ({HELP})\n")
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        line = stdin.readline()
        if not line:  # Ctrl-D / end of input
            break
        prompt = line.strip()
        if not prompt:
            continue
        if prompt in ("/exit", "/quit"):
            break
        if prompt == "/reset":
            messages = list(opening)
            out.write("(conversation forgotten)\n")
            continue
        messages.append({"role": "user", "content": prompt})
        body = {"model": model, "messages": messages, "max_tokens": ns.max_tokens,
                "stream_options": {"include_usage": True}}
        if ns.temperature is not None:
            body["temperature"] = ns.temperature
        try:
            text, usage = _reply(client, body, out, dim=interactive)
        except ChatError as exc:
            messages.pop()  # the turn did not happen; the user may retry it
            out.write(f"\n[error: {exc}]\n")
            continue
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the chat
            messages.pop()
            out.write("\n[interrupted]\n")
            continue
        messages.append({"role": "assistant", "content": text})
        if ns.usage and usage is not None:
            out.write(f"[{usage.prompt_tokens} prompt tokens, {usage.completion_tokens} completion tokens]\n")
    return 0


def cmd_chat(argv: list[str]) -> int:
    return run(build_parser().parse_args(argv))
