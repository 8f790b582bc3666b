"""The discovery boundary: what a worker registers and what frontends and routers watch."""

from __future__ import annotations

import msgspec


class ModelCard(msgspec.Struct, omit_defaults=True, kw_only=True):
    served_name: str
    # Where the gateway loads the tokenizer from: an HF-format directory (tokenizer.json,
    # tokenizer_config.json, optional chat_template.jinja) or "builtin:bytes".
    tokenizer: str
    context_length: int
    block_size: int
    kv_capacity_blocks: int
    role: str = "agg"  # agg | prefill | decode
    transfer: str = ""  # prefill and decode workers: their KV-transfer backend
    engine: str = ""
    chat_template: str | None = None  # overrides the tokenizer directory's template
    wants_last_message_tokens: bool = False
    # sha256 over the tokenizer files; a frontend on another host fetches the files from a
    # worker (`model_files` endpoint) when it has no identical copy.
    tokenizer_digest: str = ""
    # Output parsers the frontend applies to this model's chat completions (by name).
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    # Whether the engine honours `PreprocessedRequest.guided` (structured output).
    structured_output: bool = False
    # Whether the engine computes the prompt's own logprobs (`OutputOptions.prompt_logprobs`).
    prompt_logprobs: bool = False
    # Prefill workers with a rendezvous handoff: their engine's `EngineInfo.disagg_bootstrap`.
    disagg_bootstrap: dict | None = None


class InstanceRecord(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One live endpoint of one worker process, stored under `namespace/component/endpoint/id`."""

    instance_id: str
    namespace: str
    component: str
    endpoint: str
    address: str  # host:port of its request plane server
    transport: str = "tcp"  # request plane: tcp (address host:port) | nats (address = subject prefix)
    event_plane: str = "tcp"  # tcp: the `events` endpoint; nats: `{namespace}.events.{instance_id}`
    hostname: str = ""
    pid: int = 0
    model: ModelCard | None = None

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.component}/{self.endpoint}/{self.instance_id}"


class ModelFileChunk(msgspec.Struct, array_like=True):
    """A piece of one tokenizer file, streamed by a worker's `model_files` endpoint."""

    name: str
    data: bytes
    last: bool
