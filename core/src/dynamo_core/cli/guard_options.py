"""Flags of the frontend's fault tolerance and protection (migration, stalls, API keys, TLS,
limits) and of a worker's drain, with their `DYN_*` environment defaults.

API keys are kept off child command lines (`ps` would show them): `dynamo serve` hands them to
its frontend through `DYN_API_KEYS`.
"""

from __future__ import annotations

import argparse
import os

from dynamo_core.cli.options import env_default, non_negative_int
from dynamo_core.frontend.admission import DEFAULT_MAX_BODY_BYTES
from dynamo_core.frontend.migration import DEFAULT_MIGRATION_LIMIT

FRONTEND_GROUP_TITLE = "fault tolerance and limits"
API_KEY_GROUP_TITLE = "api keys"
API_KEY_DESTS = frozenset({"api_key", "api_key_file"})  # never on a child's command line
WORKER_GROUP_TITLE = "drain"


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_frontend_guard_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(FRONTEND_GROUP_TITLE)
    group.add_argument(
        "--migration-limit", type=non_negative_int, default=env_default("DYN_MIGRATION_LIMIT", DEFAULT_MIGRATION_LIMIT),
        help="times one request may move to another worker when its worker fails mid-stream; 0: never "
             "(the stream ends with an error); also the times a rendezvous (SGLang) prefill/decode split that "
             "failed before its first token is tried again in a fresh room (env DYN_MIGRATION_LIMIT; "
             "default: %(default)s)",
    )
    group.add_argument(
        "--stall-timeout", type=non_negative_float, default=env_default("DYN_STALL_TIMEOUT", 0.0),
        help="seconds a worker may send nothing on a request (first token included) before the request moves "
             "to another worker and the worker is not routed to until it reports again; 0: no bound "
             "(env DYN_STALL_TIMEOUT; default: %(default)s)",
    )
    group.add_argument(
        "--max-body-bytes", type=non_negative_int, default=env_default("DYN_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        help="larger request bodies get 413 before they are read whole (env DYN_MAX_BODY_BYTES; default: %(default)s)",
    )
    group.add_argument(
        "--max-inflight", type=non_negative_int, default=env_default("DYN_MAX_INFLIGHT", 0),
        help="requests in flight per model beyond which the frontend answers 429 with Retry-After; 0: no limit "
             "(env DYN_MAX_INFLIGHT; default: %(default)s)",
    )
    group.add_argument("--tls-cert", default=os.environ.get("DYN_TLS_CERT"), metavar="FILE",
                       help="serve HTTPS with this PEM certificate (chain) (env DYN_TLS_CERT); needs --tls-key")
    group.add_argument("--tls-key", default=os.environ.get("DYN_TLS_KEY"), metavar="FILE",
                       help="the certificate's PEM private key (env DYN_TLS_KEY)")
    group.add_argument("--protect-metrics", action="store_true",
                       help="/metrics also needs an API key (/health and /live stay open)")
    keys = parser.add_argument_group(API_KEY_GROUP_TITLE)
    keys.add_argument(
        "--api-key", action="append", default=[], metavar="KEY",
        help="require `Authorization: Bearer KEY` on /v1/* (repeatable; also env DYN_API_KEYS, comma-separated)",
    )
    keys.add_argument("--api-key-file", default=os.environ.get("DYN_API_KEY_FILE"), metavar="FILE",
                      help="a file of API keys, one a line (env DYN_API_KEY_FILE)")


def api_keys_from(ns: argparse.Namespace) -> tuple[str, ...]:
    """Every key the flags, the environment and the key file give; empty: no key needed."""
    keys = list(ns.api_key)
    keys += [k.strip() for k in os.environ.get("DYN_API_KEYS", "").split(",")]
    if ns.api_key_file:
        with open(ns.api_key_file, encoding="utf-8") as f:
            keys += [line.strip() for line in f if not line.lstrip().startswith("#")]
    return tuple(dict.fromkeys(k for k in keys if k))


def check_api_key_file(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    """At start, not when a child reads it: a key file that cannot be read, or holds no key (which
    would leave /v1/* open while the flag says it is protected), is a usage error."""
    if not ns.api_key_file:
        return
    try:
        with open(ns.api_key_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"--api-key-file {ns.api_key_file}: cannot read it ({getattr(exc, 'strerror', None) or exc})")
    if not any(line.strip() and not line.lstrip().startswith("#") for line in lines):
        parser.error(f"--api-key-file {ns.api_key_file}: holds no key (one a line; # starts a comment)")


def check_tls(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    if bool(ns.tls_cert) != bool(ns.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", ns.tls_cert), ("--tls-key", ns.tls_key)):
        if path and not os.path.isfile(path):
            parser.error(f"{flag} {path}: no such file")


def add_worker_drain_option(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(WORKER_GROUP_TITLE)
    group.add_argument(
        "--drain-timeout", type=non_negative_float, default=env_default("DYN_DRAIN_TIMEOUT", 30.0),
        help="on SIGTERM, seconds the worker lets in-flight requests finish after leaving discovery; the rest "
             "then move to other workers (request migration) (env DYN_DRAIN_TIMEOUT; default: %(default)s)",
    )
