"""The routing peers' boundary: what one frontend's router tells the others about its requests.

Several frontends routing for one pool of workers see the same KV index (each subscribes to
every worker's events) but, on their own, only the requests they sent themselves: a second
frontend would put its next request on the worker the first has just filled. So each router
may publish its in-flight changes (`PeerRequest`), and every frontend sends `PeerHeartbeat`s;
a peer whose heartbeats stop is forgotten with all its requests (`runtime.peer_plane`).
What the numbers mean is the routers' business: the same router type runs on every peer.
"""

from __future__ import annotations

from typing import Literal

import msgspec

PeerRequestState = Literal["routed", "first_token", "finished"]


class PeerRequest(msgspec.Struct, tag="request", kw_only=True):
    """A request of frontend ``frontend_id`` was routed, got its first token, or ended."""

    frontend_id: str
    model: str
    pool: str  # "prefill" for a prefill pool's router, else "agg"
    request_id: str
    worker_id: str
    state: PeerRequestState
    prefill_tokens: int = 0  # uncached prompt tokens until the first token
    decode_blocks: int = 0  # KV blocks it occupies until it ends


class PeerHeartbeat(msgspec.Struct, tag="heartbeat", kw_only=True):
    frontend_id: str


PeerMessage = PeerRequest | PeerHeartbeat


class PeerAddress(msgspec.Struct, kw_only=True):
    """Where frontend ``frontend_id`` receives its peers' messages (a discovery record of the
    local peer transport: loopback UDP ``host:port`` on host ``hostname``)."""

    frontend_id: str
    hostname: str  # peers on other hosts (etcd discovery) cannot reach this loopback address
    host: str
    port: int
    pid: int
