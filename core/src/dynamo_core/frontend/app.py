"""The frontend process: a Litestar app over the model registry, served by uvicorn."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.openapi import OpenAPIConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dynamo_core.frontend import metrics
from dynamo_core.frontend.completions import ServingState, chat_completions, completions, decode_body, find_model
from dynamo_core.frontend.engine_client import EngineClient
from dynamo_core.frontend.errors import BadRequestError, openai_error_handler
from dynamo_core.frontend.model_registry import ModelRegistry
from dynamo_core.frontend.preprocessor import prepare_chat, prepare_completion, tokenize_for_endpoint
from dynamo_core.plugins import get_registry
from dynamo_core.protocols.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelList,
    ModelObject,
    TokenizeRequest,
    TokenizeResponse,
)
from dynamo_core.runtime.discovery import DiscoveryBackend, DiscoveryConfig
from dynamo_core.runtime.transports import TransportClients

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()
_tokenize_decoder = msgspec.json.Decoder(TokenizeRequest)
_detokenize_decoder = msgspec.json.Decoder(DetokenizeRequest)


@dataclass
class FrontendConfig:
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    namespace: str = "dynamo"
    router: str = "round-robin"
    router_options: argparse.Namespace = field(default_factory=argparse.Namespace)
    discovery: str = "file"
    discovery_config: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    nats_url: str | None = None


def _json_response(payload, status_code: int = 200) -> Response:
    return Response(_json.encode(payload), status_code=status_code, media_type="application/json")


def create_app(config: FrontendConfig, discovery: DiscoveryBackend | None = None) -> Litestar:
    plugins = get_registry()
    router_spec = plugins.get("router", config.router)
    owns_discovery = discovery is None
    discovery = discovery or plugins.get("discovery", config.discovery).create(config.discovery_config)
    client = TransportClients(config.nats_url)
    registry = ModelRegistry(discovery, client, config.namespace, router_spec.create, config.router_options)
    state = ServingState(registry=registry, engine=EngineClient(client))

    @post("/v1/chat/completions", summary="Create a chat completion", status_code=200)
    async def chat(request: Request) -> Response:
        return await chat_completions(state, await request.body())

    @post("/v1/completions", summary="Create a text completion", status_code=200)
    async def text(request: Request) -> Response:
        return await completions(state, await request.body())

    @get("/v1/models", summary="List served models")
    async def list_models() -> Response:
        data = [
            ModelObject(id=m.name, created=m.created, max_model_len=m.card.context_length)
            for m in sorted(registry.models.values(), key=lambda m: m.name)
        ]
        return _json_response(ModelList(data=data))

    @get("/v1/models/{model_id:path}", summary="One served model")
    async def get_model(model_id: str) -> Response:
        model = find_model(state, model_id.lstrip("/"))
        return _json_response(ModelObject(id=model.name, created=model.created, max_model_len=model.card.context_length))

    @post("/tokenize", summary="Token ids of a prompt, or of chat messages as the chat endpoint renders them", status_code=200)
    async def tokenize(request: Request) -> Response:
        req = decode_body(_tokenize_decoder, await request.body())
        model = find_model(state, req.model)
        tokens = tokenize_for_endpoint(model, req)
        return _json_response(TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=model.card.context_length))

    @post("/detokenize", summary="Text of token ids", status_code=200)
    async def detokenize(request: Request) -> Response:
        req = decode_body(_detokenize_decoder, await request.body())
        model = find_model(state, req.model)
        vocab = model.tokenizer.vocab_size
        if any(t < 0 or t >= vocab for t in req.tokens):
            raise BadRequestError(f"token ids must lie in [0, {vocab})", param="tokens")
        return _json_response(DetokenizeResponse(prompt=model.tokenizer.decode(req.tokens, skip_special_tokens=False)))

    @get("/health", summary="200 while at least one worker serves; 503 otherwise")
    async def health() -> Response:
        instances = [
            {
                "model": m.name,
                "instance_id": h.record.instance_id,
                "address": h.record.address,
                "pid": h.record.pid,
                "role": m.card.role,
                "in_flight": h.state.in_flight,
            }
            for m in registry.models.values()
            for h in m.workers.values()
        ]
        status = "healthy" if instances else "unhealthy"
        body = {"status": status, "instances": instances}
        if not instances:
            body["message"] = "no worker has registered; start one with `dynamo worker`"
        return _json_response(body, 200 if instances else 503)

    @get("/live", summary="200 while the process runs")
    async def live() -> Response:
        return _json_response({"status": "live"})

    @get("/metrics", summary="Prometheus metrics", include_in_schema=True)
    async def prometheus_metrics() -> Response:
        for model in registry.models.values():
            metrics.WORKERS.labels(model.name).set(len(model.workers))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @post("/debug/routing", summary="Per-worker routing scores for a chat or completions body", status_code=200)
    async def debug_routing(request: Request) -> Response:
        body = await request.body()
        raw = msgspec.json.decode(body) if body else {}
        if not isinstance(raw, dict) or "model" not in raw:
            raise BadRequestError("body must be a chat or completions request with 'model'", param="model")
        model = find_model(state, raw["model"])
        if "messages" in raw:
            choices = await prepare_chat(model, msgspec.convert(raw, ChatCompletionRequest), "debug")
        else:
            choices = await prepare_completion(model, msgspec.convert(raw, CompletionRequest), "debug")
        request = choices[0].request
        scores = model.router.debug_scores(request, model.worker_states())
        return _json_response({"model": model.name, "prompt_tokens": len(request.token_ids), "workers": scores})

    async def on_startup() -> None:
        await registry.start()

    async def on_shutdown() -> None:
        await registry.stop()
        await client.close()
        if owns_discovery:
            await discovery.close()

    app = Litestar(
        route_handlers=[chat, text, list_models, get_model, tokenize, detokenize, health, live, prometheus_metrics, debug_routing],
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        exception_handlers={Exception: openai_error_handler},
        openapi_config=OpenAPIConfig(title="dynamo", version="0.1.0", path="/openapi"),
        logging_config=None,  # keep the process's own logging setup (DYN_LOG, one format)
        debug=False,
    )
    app.state.serving = state
    return app


async def run_frontend(config: FrontendConfig, discovery: DiscoveryBackend | None = None) -> None:
    app = create_app(config, discovery)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.http_host,
            port=config.http_port,
            log_level="warning",
            access_log=False,
            loop="none",  # run on the caller's loop
            http="httptools",
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )
    log.info(
        "frontend listening on http://%s:%d (router=%s, discovery=%s, namespace=%s)",
        config.http_host, config.http_port, config.router, config.discovery, config.namespace,
    )
    await server.serve()
