"""Record what SGLang really emits, as fixtures for dynamo-sglang's CPU tests.

Runs on the GPU machine (SGLang installed), against the random Llama: starts `sglang.Engine`
the way the plugin does (token ids in, incremental streaming, page size 16, the ZMQ KV-event
publisher with its replay socket), then records

- streams of `async_generate(stream=True)` dicts, meta_info included: greedy with logprobs and
  top logprobs, the same prompt again (prefix-cache hit), a stop-token finish, and an abort
  (`tokenizer_manager.abort_request`) mid-stream;
- the KV-event frames the publisher sent (`[topic, seq, payload]`, payload as base64) and
  the replay socket's answer to a request from seq 0;
- the tokenizer manager's load snapshots (`load_snapshot_reader.read_all()`, msgspec builtins)
  and the engine facts the card reads (page size, max_total_num_tokens, context length);
- the options of SGLang's server-argument parser (flags, nargs, action class, choices, type).

    python3 tests/gpu/record_sglang_fixtures.py MODEL_DIR OUT_FILE

The CPU tests load OUT_FILE from plugins/dynamo-sglang/tests/fixtures/sglang_0.5.15.json.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import zmq

PAGE = 16
PROMPT = [(t * 7919) % 31990 + 5 for t in range(40)]  # two full pages and 8 tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return port if port < 40000 else 20000 + port % 20000


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: msgspec.to_builtins(v) if hasattr(v, "__struct_fields__") else repr(v)))


async def _stream(engine, name: str, rid: str, sampling: dict, *, abort_after: int | None = None, **extra) -> dict:
    started = time.monotonic()
    stream = await engine.async_generate(input_ids=PROMPT, sampling_params=sampling, stream=True, rid=rid, **extra)
    chunks = []
    async for chunk in stream:
        chunks.append(_jsonable(chunk))
        if abort_after is not None and len(chunks) == abort_after:
            engine.tokenizer_manager.abort_request(rid=rid)
    print(f"{name}: {len(chunks)} chunks in {time.monotonic() - started:.2f} s, finish "
          f"{chunks[-1]['meta_info'].get('finish_reason')}, tokens {sum(len(c['output_ids']) for c in chunks)}", flush=True)
    return {"input_ids": PROMPT, "sampling_params": sampling, "extra": extra, "chunks": chunks}


def _drain(sub) -> list[list[str]]:
    frames = []
    while sub.poll(500):
        topic, seq, payload = sub.recv_multipart()
        frames.append([topic.decode(), int.from_bytes(seq, "big"), base64.b64encode(payload).decode()])
    return frames


def _replay(ctx, endpoint: str) -> list[list]:
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    dealer.send_multipart([b"", (0).to_bytes(8, "big")])
    answered = []
    while dealer.poll(5000):
        frames = dealer.recv_multipart()
        seq = int.from_bytes(frames[-2], "big", signed=True) if len(frames) >= 3 else None  # [b"", seq, payload]
        answered.append([len(frames), seq, base64.b64encode(frames[-1]).decode()])
        if seq == -1:
            break
    dealer.close(linger=0)
    return answered


def _parser_actions() -> list[dict]:
    """The options of SGLang's server-argument parser, as the plugin's option test rebuilds them."""
    import argparse

    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return [{"flags": a.option_strings, "dest": a.dest, "nargs": a.nargs, "action": type(a).__name__,
             "choices": [str(c) for c in a.choices] if a.choices is not None else None,
             "type": getattr(a.type, "__name__", None) if a.type is not None else None,
             "default": a.default if isinstance(a.default, (str, int, float, bool, type(None))) else repr(a.default)}
            for a in parser._actions if a.option_strings]


def main(model: str, out: Path) -> None:
    from sglang.srt.entrypoints.engine import Engine

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    replay = f"ipc://{tempfile.gettempdir()}/sglang-fixture-replay-{os.getpid()}.ipc"
    kv_events = {"publisher": "zmq", "endpoint": f"tcp://127.0.0.1:{port}", "replay_endpoint": replay, "topic": "kv"}
    started = time.monotonic()
    engine = Engine(model_path=model, skip_tokenizer_init=True, incremental_streaming_output=True, page_size=PAGE,
                    attention_backend="triton", sampling_backend="pytorch", grammar_backend="none",
                    mem_fraction_static=0.2, kv_events_config=json.dumps(kv_events), port=_free_port(),
                    disable_cuda_graph=True, log_level="warning")
    print(f"engine up in {time.monotonic() - started:.0f} s", flush=True)
    record: dict = {"sglang_engine_kwargs": {"page_size": PAGE, "kv_events_config": kv_events}}

    async def streams() -> None:
        greedy = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
        record["stream_logprobs"] = await _stream(engine, "logprobs", "fx-logprobs", greedy,
                                                  return_logprob=True, top_logprobs_num=3, logprob_start_len=-1)
        record["stream_cached"] = await _stream(engine, "cached", "fx-cached", greedy)
        third = [t for c in record["stream_cached"]["chunks"] for t in c["output_ids"]][2]
        record["stream_stop"] = await _stream(engine, "stop", "fx-stop", {**greedy, "ignore_eos": False, "stop_token_ids": [third]})
        record["stream_abort"] = await _stream(engine, "abort", "fx-abort", {"max_new_tokens": 2000, "ignore_eos": True},
                                               abort_after=3)
        record["load_snapshots"] = _jsonable([s for s in engine.tokenizer_manager.load_snapshot_reader.read_all() if s is not None])
        try:
            record["get_loads"] = _jsonable(await engine.tokenizer_manager.get_loads(include=["all"]))
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            record["get_loads"] = f"error: {exc!r}"

    engine.loop.run_until_complete(streams())
    time.sleep(1.0)  # the publisher thread sends the last batches
    record["kv_frames"] = _drain(sub)
    record["kv_replay_from_0"] = _replay(ctx, replay)
    infos = engine._scheduler_init_result.scheduler_infos[0]
    record["engine"] = {
        "page_size": engine.server_args.page_size,
        "max_total_num_tokens": infos.get("max_total_num_tokens"),
        "max_req_input_len": infos.get("max_req_input_len"),
        "context_len": engine.tokenizer_manager.context_len,
        "sglang_version": __import__("sglang").__version__,
    }
    record["parser_actions"] = _parser_actions()
    print(f"KV frames {len(record['kv_frames'])}, replay answered {len(record['kv_replay_from_0'])}, "
          f"engine {record['engine']}", flush=True)
    out.write_text(json.dumps(record, indent=1))
    engine.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
