"""The frontend process: a Litestar app over the model registry, served by uvicorn.

The route handlers are module-level functions that read the app's `ServingState`; the
generation endpoints' serving path is `completions.py`. `create_app` builds the state and
wires its start and stop to the app's lifespan.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.params import FromPath
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dynamo_core.frontend import metrics
from dynamo_core.frontend.completions import ServingState, chat_completions, completions, decode_body, find_model
from dynamo_core.frontend.disagg import DisaggregatingClient
from dynamo_core.frontend.admission import DEFAULT_MAX_BODY_BYTES, Admission
from dynamo_core.frontend.auth import ApiKeyGuard
from dynamo_core.frontend.engine_client import EngineClient
from dynamo_core.frontend.http_processes import signal_ready
from dynamo_core.frontend.migration import DEFAULT_MIGRATION_LIMIT
from dynamo_core.frontend.errors import BadRequestError, openai_error_handler
from dynamo_core.frontend.model_registry import ModelRegistry
from dynamo_core.frontend.openapi import api, build_openapi
from dynamo_core.frontend.preprocessor import prepare_chat, prepare_completion
from dynamo_core.frontend.prompt_encoding import tokenize_for_endpoint
from dynamo_core.frontend.prompt_pool import PromptPool
from dynamo_core.frontend.responses import create_response
from dynamo_core.plugins import get_registry
from dynamo_core.protocols.responses import Response as ResponseObject
from dynamo_core.protocols.responses import ResponsesRequest, ResponseStreamEvent
from dynamo_core.protocols.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelList,
    ModelObject,
    TokenizeRequest,
    TokenizeResponse,
)
from dynamo_core.runtime.discovery import DiscoveryBackend, DiscoveryConfig
from dynamo_core.runtime.gc_heap import freeze_heap
from dynamo_core.runtime.peer_plane import PeerPlane
from dynamo_core.runtime.peer_transports import LocalPeerTransport, NatsPeerTransport, PeerTransport
from dynamo_core.runtime.transports import TransportClients

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()
_tokenize_decoder = msgspec.json.Decoder(TokenizeRequest)
_detokenize_decoder = msgspec.json.Decoder(DetokenizeRequest)
_any_decoder = msgspec.json.Decoder()
_routing_chat_decoder = msgspec.json.Decoder(ChatCompletionRequest)
_routing_completion_decoder = msgspec.json.Decoder(CompletionRequest)
_GENERATION_ERRORS = (400, 404, 500, 503)  # 500: the worker failed the request
_MODEL_ERRORS = (400, 404, 503)


class HealthInstance(msgspec.Struct):
    model: str
    instance_id: str
    address: str
    pid: int
    role: str
    in_flight: int
    # From the worker's latest load report (None before the first): KV blocks in use.
    active_kv_blocks: int | None = None


class Health(msgspec.Struct, omit_defaults=True):
    status: str  # "healthy" | "unhealthy"
    instances: list[HealthInstance]
    message: str | None = None


class Live(msgspec.Struct):
    status: str = "live"
    pid: int = 0  # the answering process: one of N under --http-workers N


class RoutingScores(msgspec.Struct):
    model: str
    prompt_tokens: int
    workers: dict[str, Any]  # the router's own per-worker details


@dataclass
class FrontendConfig:
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Processes that template and tokenize long prompts (prompt_pool.py); 0: a thread instead.
    preprocess_workers: int = 0
    preprocess_min_chars: int = 8192  # prompts longer than this go to that pool
    # With prefill workers present, shorter prompts are served whole by a decode worker.
    disagg_min_prompt_tokens: int = 512
    namespace: str = "dynamo"
    router: str = "round-robin"
    router_options: argparse.Namespace = field(default_factory=argparse.Namespace)
    discovery: str = "file"
    discovery_config: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    nats_url: str | None = None
    # Routers share their in-flight requests with the other frontends (runtime/peer_plane.py):
    # "nats" over NATS; else over loopback UDP between this host's frontends (discovery finds them).
    event_plane: str = "tcp"
    # Fault tolerance and protection (cli/guard_options.py says what each does).
    migration_limit: int = DEFAULT_MIGRATION_LIMIT
    stall_timeout_s: float = 0.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_inflight: int = 0
    api_keys: tuple[str, ...] = ()
    protect_metrics: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    # One of the N processes of `--http-workers N`: bind the port with SO_REUSEPORT beside them.
    reuse_port: bool = False


async def _peer_connection(url: str | None):
    from dynamo_core.runtime.nats_plane import connect, nats_url

    return await connect(nats_url(url), "dynamo-frontend-peers")


def _peer_transport(config: FrontendConfig, discovery: DiscoveryBackend) -> PeerTransport | None:
    """NATS where frontends have it (any host); else loopback UDP between the frontends of
    this host, found through discovery; none with mem discovery (one frontend by definition)."""
    if config.event_plane == "nats":
        return NatsPeerTransport(config.namespace, lambda: _peer_connection(config.nats_url))
    if config.discovery != "mem":
        return LocalPeerTransport(discovery, config.namespace)
    return None


def _no_workers_message(registry: ModelRegistry) -> str:
    if registry.last_departure is None:
        return "no worker has registered; start one with `dynamo worker`"
    worker_id, model, at = registry.last_departure
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    return (f"every worker has left; the last, {worker_id} of model '{model}', left at {when} "
            f"({time.time() - at:.0f} s ago); start one with `dynamo worker`")


def _json_response(payload, status_code: int = 200) -> Response:
    return Response(_json.encode(payload), status_code=status_code, media_type="application/json")


def _serving(request: Request) -> ServingState:
    return request.app.state.serving


# ---------------------------------------------------------------------------------------------
# route handlers: each reads the app's `ServingState` from `request.app.state.serving`
# ---------------------------------------------------------------------------------------------


@post(
    "/v1/chat/completions", summary="Create a chat completion", status_code=200,
    opt=api(request=ChatCompletionRequest, response=ChatCompletion, stream=ChatCompletionChunk, errors=_GENERATION_ERRORS),
)
async def chat(request: Request) -> Response:
    return await chat_completions(_serving(request), await request.body())


@post(
    "/v1/completions", summary="Create a text completion", status_code=200,
    opt=api(request=CompletionRequest, response=Completion, stream=Completion, errors=_GENERATION_ERRORS),
)
async def text(request: Request) -> Response:
    return await completions(_serving(request), await request.body())


@post(
    "/v1/responses", summary="Create a model response (OpenAI's Responses API; stateless)", status_code=200,
    opt=api(request=ResponsesRequest, response=ResponseObject, stream=ResponseStreamEvent, errors=_GENERATION_ERRORS),
)
async def responses(request: Request) -> Response:
    return await create_response(_serving(request), await request.body())


@get("/v1/models", summary="List served models", opt=api(response=ModelList))
async def list_models(request: Request) -> Response:
    data = [
        ModelObject(id=m.name, created=m.created, max_model_len=m.card.context_length)
        for m in sorted(_serving(request).registry.models.values(), key=lambda m: m.name)
    ]
    return _json_response(ModelList(data=data))


@get("/v1/models/{model_id:path}", summary="One served model", opt=api(response=ModelObject, errors=(404, 503)))
async def get_model(request: Request, model_id: FromPath[str]) -> Response:
    model = find_model(_serving(request), model_id.lstrip("/"))
    return _json_response(ModelObject(id=model.name, created=model.created, max_model_len=model.card.context_length))


@post(
    "/tokenize", summary="Token ids of a prompt, or of chat messages as the chat endpoint renders them", status_code=200,
    opt=api(request=TokenizeRequest, response=TokenizeResponse, errors=_MODEL_ERRORS),
)
async def tokenize(request: Request) -> Response:
    req = decode_body(_tokenize_decoder, await request.body())
    model = find_model(_serving(request), req.model)
    tokens = tokenize_for_endpoint(model, req)
    return _json_response(TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=model.card.context_length))


@post(
    "/detokenize", summary="Text of token ids", status_code=200,
    opt=api(request=DetokenizeRequest, response=DetokenizeResponse, errors=_MODEL_ERRORS),
)
async def detokenize(request: Request) -> Response:
    req = decode_body(_detokenize_decoder, await request.body())
    model = find_model(_serving(request), req.model)
    vocab = model.tokenizer.vocab_size
    if any(t < 0 or t >= vocab for t in req.tokens):
        raise BadRequestError(f"token ids must lie in [0, {vocab})", param="tokens")
    return _json_response(DetokenizeResponse(prompt=model.tokenizer.decode(req.tokens, skip_special_tokens=False)))


@get("/health", summary="200 while at least one worker serves; 503 otherwise", opt=api(response=Health, extra=((503, Health),)))
async def health(request: Request) -> Response:
    instances = [
        HealthInstance(
            m.name, h.record.instance_id, h.record.address, h.record.pid, h.role, h.state.in_flight,
            h.state.load.active_kv_blocks if h.state.load is not None else None,
        )
        for m in _serving(request).registry.models.values()
        for h in m.workers.values()
    ]
    if instances:
        return _json_response(Health("healthy", instances))
    return _json_response(Health("unhealthy", [], _no_workers_message(_serving(request).registry)), 503)


@get("/live", summary="200 while the process runs", opt=api(response=Live))
async def live() -> Response:
    return _json_response(Live(pid=os.getpid()))


@get("/metrics", summary="Prometheus metrics", opt=api(media_type="text/plain"))
async def prometheus_metrics(request: Request) -> Response:
    for model in _serving(request).registry.models.values():
        metrics.WORKERS.labels(model.name).set(len(model.workers))
    return Response(generate_latest(_metrics_registry()), media_type=CONTENT_TYPE_LATEST)


def _metrics_registry() -> CollectorRegistry:
    """This process's metrics; under `--http-workers N` (PROMETHEUS_MULTIPROC_DIR set by the
    supervisor) those of all N, summed by prometheus_client's multiprocess collector."""
    from prometheus_client import REGISTRY

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return REGISTRY
    from prometheus_client import multiprocess

    from dynamo_core.frontend.http_processes import GroupProcessCollector

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, directory)
    registry.register(GroupProcessCollector(directory))
    return registry


@post(
    "/debug/routing", summary="Per-worker routing scores for a chat or completions body", status_code=200,
    opt=api(request=(ChatCompletionRequest, CompletionRequest), response=RoutingScores, errors=_MODEL_ERRORS),
)
async def debug_routing(request: Request) -> Response:
    # Decode and convert through `decode_body`, so malformed JSON or fields are a 400 naming
    # the param (they were 500s: msgspec errors reached the catch-all handler).
    body = await request.body() or b"{}"
    raw = decode_body(_any_decoder, body)
    if not isinstance(raw, dict) or "model" not in raw:
        raise BadRequestError("body must be a chat or completions request with 'model'", param="model")
    is_chat = "messages" in raw
    req = decode_body(_routing_chat_decoder if is_chat else _routing_completion_decoder, body)
    state = _serving(request)
    model = find_model(state, req.model)
    choices = await (prepare_chat if is_chat else prepare_completion)(model, req, "debug", state.prompt_pool)
    routed = choices[0].request
    scores = model.router.debug_scores(routed, model.worker_states())
    return _json_response(RoutingScores(model.name, len(routed.token_ids), scores))


# Our own document from the structs (see frontend/openapi.py), in place of Litestar's schema
# and docs UI (its /openapi/* pages), which would describe handlers that take a raw Request.
@get("/openapi.json", summary="This OpenAPI 3.1 document", opt=api(response=dict[str, Any]))
async def openapi_json(request: Request) -> Response:
    return Response(request.app.state.openapi_document, media_type="application/json")


ROUTES = [
    chat, text, responses, list_models, get_model, tokenize, detokenize, health, live, prometheus_metrics, debug_routing, openapi_json,
]


def create_app(config: FrontendConfig, discovery: DiscoveryBackend | None = None) -> Litestar:
    """The app and its serving state: registry (watching discovery), engine client (request
    plane, disaggregation) and prompt pool, started and stopped with the app."""
    plugins = get_registry()
    router_spec = plugins.get("router", config.router)
    owns_discovery = discovery is None
    discovery = discovery or plugins.get("discovery", config.discovery).create(config.discovery_config)
    client = TransportClients(config.nats_url)
    peers: PeerPlane | None = None
    if (transport := _peer_transport(config, discovery)) is not None:
        peers = PeerPlane(transport, lambda request: registry.on_peer_request(request),
                          lambda peer: registry.on_peer_gone(peer))
    registry = ModelRegistry(discovery, client, config.namespace, router_spec.create, config.router_options,
                             share=peers.publish if peers is not None else (lambda request: None))
    engine_client = EngineClient(client, config.migration_limit, config.stall_timeout_s)
    engine = DisaggregatingClient(engine_client, client, config.disagg_min_prompt_tokens)
    pool = PromptPool(config.preprocess_workers, config.preprocess_min_chars) if config.preprocess_workers > 0 else None
    state = ServingState(registry=registry, engine=engine, prompt_pool=pool, admission=Admission(config.max_inflight))

    async def on_startup() -> None:
        if pool is not None:
            pool.start()
        if peers is not None:
            await peers.start()
        await registry.start()
        freeze_heap("frontend started")

    async def on_shutdown() -> None:
        await registry.stop()
        if peers is not None:
            await peers.stop()
        if pool is not None:
            await pool.close()
        await engine.close()
        await client.close()
        if owns_discovery:
            await discovery.close()

    app = Litestar(
        route_handlers=ROUTES,
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        exception_handlers={Exception: openai_error_handler},
        openapi_config=None,
        request_max_body_size=config.max_body_bytes or None,  # 413 from Content-Length, or once read past it
        logging_config=None,  # keep the process's own logging setup (DYN_LOG, one format)
        debug=False,
    )
    app.state.serving = state
    app.state.openapi_document = msgspec.json.encode(build_openapi(app, title="dynamo", version="0.1.0"))
    return app


async def run_frontend(config: FrontendConfig, discovery: DiscoveryBackend | None = None) -> None:
    app = create_app(config, discovery)
    asgi = ApiKeyGuard(app, config.api_keys, config.protect_metrics) if config.api_keys else app
    server = uvicorn.Server(
        uvicorn.Config(
            asgi,
            host=config.http_host,
            port=config.http_port,
            log_level="warning",
            access_log=False,
            loop="none",  # run on the caller's loop
            http="httptools",
            lifespan="on",
            timeout_graceful_shutdown=5,
            ssl_certfile=config.tls_cert,
            ssl_keyfile=config.tls_key,
        )
    )
    # Bind before saying "listening": a taken port is an exit naming it, not a log line first.
    sock = socket.socket(socket.AF_INET6 if ":" in config.http_host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if config.reuse_port:  # the kernel spreads connections over the N processes bound so
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((config.http_host, config.http_port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"dynamo frontend: error: cannot listen on {config.http_host}:{config.http_port}: "
                         f"{exc.strerror}; choose another port with --http-port") from None
    log.info(
        "frontend listening on %s://%s:%d (router=%s, discovery=%s, namespace=%s, api keys: %d)",
        "https" if config.tls_cert else "http", config.http_host, config.http_port, config.router, config.discovery,
        config.namespace, len(config.api_keys),
    )
    ready = asyncio.create_task(_signal_when_started(server))
    try:
        await server.serve(sockets=[sock])
    finally:
        ready.cancel()


async def _signal_when_started(server: uvicorn.Server) -> None:
    while not server.started:
        await asyncio.sleep(0.05)
    signal_ready()
