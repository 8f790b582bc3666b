"""Moving a model's tokenizer files from a worker to a frontend that lacks them.

Workers on other hosts register a model card whose `tokenizer` path means nothing to a
frontend elsewhere. The worker therefore serves the files on its `model_files` endpoint, and
the card carries their digest; a frontend without an identical copy fetches them once into
its cache directory (`$DYN_CACHE_DIR`, default `~/.cache/dynamo`) and loads from there.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec

from dynamo_core.protocols.discovery import ModelFileChunk

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
    "config.json",
)
CHUNK_BYTES = 512 * 1024  # under NATS's default 1 MiB message limit

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ModelFileChunk)


def tokenizer_files(model_dir: str | Path) -> list[Path]:
    root = Path(model_dir)
    return [root / name for name in TOKENIZER_FILES if (root / name).is_file()]


def tokenizer_digest(model_dir: str | Path) -> str:
    digest = hashlib.sha256()
    for path in tokenizer_files(model_dir):
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def serve_model_files(model_dir: str | Path) -> Callable[[bytes], AsyncIterator[bytes]]:
    """The worker's `model_files` endpoint handler. The files are read once, at start, so what
    is served always matches the digest registered even if the directory changes later."""
    files = [(path.name, path.read_bytes()) for path in tokenizer_files(model_dir)]

    async def handler(_payload: bytes) -> AsyncIterator[bytes]:
        for name, data in files:
            for start in range(0, max(len(data), 1), CHUNK_BYTES):
                last = start + CHUNK_BYTES >= len(data)
                yield _encoder.encode(ModelFileChunk(name, data[start : start + CHUNK_BYTES], last))

    return handler


def cache_dir() -> Path:
    return Path(os.environ.get("DYN_CACHE_DIR") or Path.home() / ".cache" / "dynamo")


def local_copy_matches(path: str, digest: str) -> bool:
    return bool(digest) and Path(path).is_dir() and tokenizer_digest(path) == digest


async def fetch_model_files(chunks: AsyncIterator[bytes], digest: str) -> Path:
    """Write the streamed files to the cache (atomically) and return their directory."""
    target = cache_dir() / "tokenizers" / digest
    if target.is_dir() and tokenizer_digest(target) == digest:
        return target
    staging = target.with_name(f".{digest}.{os.getpid()}.partial")
    staging.mkdir(parents=True, exist_ok=True)
    buffers: dict[str, bytearray] = {}
    async for payload in chunks:
        chunk = _decoder.decode(payload)
        if "/" in chunk.name or chunk.name.startswith("."):
            raise ValueError(f"refusing model file name {chunk.name!r}")
        buffers.setdefault(chunk.name, bytearray()).extend(chunk.data)
        if chunk.last:
            (staging / chunk.name).write_bytes(bytes(buffers.pop(chunk.name)))
    if tokenizer_digest(staging) != digest:
        raise ValueError("the model files received do not match the model card's digest")
    if target.exists():
        return target
    os.replace(staging, target)
    return target
