"""Parsed command-line options -> the typed configuration of each component.

`dynamo worker`, `dynamo frontend` and `dynamo serve` (which runs both, in one process with
`--discovery mem`) convert their namespaces here, so each component's configuration is filled
in one place. Imports of the components are kept to type checking: converting costs nothing.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from dynamo_core.cli import guard_options, options
from dynamo_core.frontend.http_processes import PROCESS_INDEX_ENV
from dynamo_core.runtime.discovery import DiscoveryConfig

if TYPE_CHECKING:
    from dynamo_core.frontend.app import FrontendConfig
    from dynamo_core.worker.worker import WorkerConfig


def discovery_config_from(ns: argparse.Namespace) -> DiscoveryConfig:
    extra = {"etcd_endpoints": ns.etcd_endpoints} if ns.etcd_endpoints else {}
    return DiscoveryConfig(lease_ttl_s=ns.lease_ttl, file_dir=ns.file_discovery_dir, extra=extra)


def worker_config_from(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> WorkerConfig:
    from dynamo_core.worker.worker import WorkerConfig

    return WorkerConfig(
        engine=ns.engine,
        model_path=ns.model,
        model_name=ns.model_name,
        chat_template=options.read_chat_template(ns.chat_template),
        reasoning_parser=ns.reasoning_parser,
        tool_call_parser=ns.tool_call_parser,
        namespace=ns.namespace,
        role=getattr(ns, "mode", "agg"),
        transfer=ns.transfer,
        discovery=ns.discovery,
        discovery_config=discovery_config_from(ns),
        host=getattr(ns, "host", "127.0.0.1"),
        port=getattr(ns, "port", 0),
        engine_options=options.group_namespace(parser, options.ENGINE_GROUP_TITLE, ns),
        drain_timeout_s=ns.drain_timeout,
        request_plane=ns.request_plane,
        event_plane=ns.event_plane,
        nats_url=ns.nats_url or None,
        health_port=getattr(ns, "health_port", None),
    )


def frontend_config_from(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> FrontendConfig:
    from dynamo_core.frontend.app import FrontendConfig

    return FrontendConfig(
        http_host=ns.http_host,
        http_port=ns.http_port,
        preprocess_workers=options.preprocess_workers_of(ns),
        preprocess_min_chars=ns.preprocess_min_chars,
        disagg_min_prompt_tokens=ns.disagg_min_prompt_tokens,
        namespace=ns.namespace,
        router=ns.router,
        router_options=options.group_namespace(parser, options.ROUTER_GROUP_TITLE, ns),
        discovery=ns.discovery,
        discovery_config=discovery_config_from(ns),
        nats_url=ns.nats_url or None,
        event_plane=ns.event_plane,
        migration_limit=ns.migration_limit,
        stall_timeout_s=ns.stall_timeout,
        max_body_bytes=ns.max_body_bytes,
        max_inflight=ns.max_inflight,
        api_keys=guard_options.api_keys_from(ns),
        protect_metrics=ns.protect_metrics,
        tls_cert=ns.tls_cert,
        tls_key=ns.tls_key,
        reuse_port=os.environ.get(PROCESS_INDEX_ENV) is not None,
    )
