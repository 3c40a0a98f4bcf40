"""Who gets in: per-client fairness and the process-wide budget of request bodies.

The work pool bounds CPU (workers + queue) and each request bounds its own bytes,
but without this module one client could hold every queue slot with expensive
images, and 256 connections could each hold a 32 MiB body at once (8 GiB). So:

* :class:`ClientLimitMiddleware` identifies the client (the peer address, or the
  ``X-Forwarded-For`` hop just before the first trusted proxy, and only when the peer
  is one of ``IMGCLF_TRUSTED_PROXIES``) and gives it a token bucket
  (``IMGCLF_CLIENT_RATE`` requests/s, ``IMGCLF_CLIENT_BURST``) and a cap on requests in
  progress (``IMGCLF_CLIENT_MAX_ACTIVE``); past either: ``429`` with ``Retry-After``;
* :class:`BodyBudget` counts body bytes held in memory by all requests together
  (``IMGCLF_MAX_BODY_BYTES_IN_FLIGHT``); a request that does not fit gets ``503
  overloaded`` before its body is read.

Probes (``/health``, ``/ready``) and ``/metrics`` are never limited: an orchestrator
must be able to tell "busy" from "dead". Everything here runs on the event loop's
thread only, so no locks. See docs/serving-edge.md.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# Never rate limited or capped (the request cap in app.py spares them too).
UNLIMITED = frozenset({"/health", "/ready", "/metrics"})
# Token buckets remembered at once; the least recently seen client is forgotten first
# (a forgotten bucket starts full again, which only ever favours that client).
MAX_CLIENTS = 65_536

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """``IMGCLF_TRUSTED_PROXIES`` entries (addresses or CIDR networks) as networks."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items)


def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_key(address: str) -> str:
    """What one client is, for the per-client limits: an IPv4 address, or an IPv6 /64.

    One IPv6 host is usually given a whole /64 and may use any address in it: keyed on
    the full address, each request from a new one got a fresh token bucket and its own
    in-progress cap, and rotating addresses also pushed everyone else's buckets out of
    the table. An IPv4-mapped IPv6 address (``::ffff:192.0.2.7``) is its IPv4 address.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # "unknown", or whatever a test transport reports
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


def client_address(scope: Scope, proxies: tuple[Network, ...]) -> str:
    """The client a request is charged to (:func:`client_key` of its address).

    The TCP peer, unless the peer is a trusted proxy: then the ``X-Forwarded-For``
    list is read from the right (the hop closest to us) past every trusted proxy, and
    the first address that is not one is the client. An entry that is not an IP
    address stops the walk (whoever wrote it is not to be believed): the last trusted
    hop is charged. A client that sends its own ``X-Forwarded-For`` straight to the
    server is charged to its own address: the header is ignored.
    """
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    if not proxies or not _trusted(peer, proxies):
        return client_key(peer)
    hops: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            hops += [h.strip() for h in value.decode("latin-1").split(",")]
    chosen = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break
        chosen = hop
        if not _trusted(hop, proxies):
            break
    return client_key(chosen)


class TokenBuckets:
    """One token bucket per client: ``rate`` tokens/s, at most ``burst``; a request takes one."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> float:
        """0 when the request may go ahead (a token taken), else seconds until a token."""
        now = self.clock()
        tokens, stamp = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[client] = (tokens, now)  # most recently seen last
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


def _too_many(reason: str, detail: str, retry_after: float) -> JSONResponse:
    # The body (if any) is not read. The connection stays open: uvicorn's parser drops
    # the body's bytes without keeping them, whereas closing with unread data would reset
    # the connection, and some clients lose the answer to a reset (docs/serving-edge.md).
    return JSONResponse(
        {"detail": detail, "reason": reason},
        status_code=429,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


class ClientLimitMiddleware:
    """Per-client token bucket and in-progress cap for every path but probes and metrics."""

    def __init__(
        self,
        app: ASGIApp,
        rate: float,
        burst: float,
        max_active: int,
        proxies: tuple[Network, ...],
        on_reject: Callable[[str], None],
    ) -> None:
        self.app = app
        self.buckets = TokenBuckets(rate, burst) if rate > 0 else None
        self.max_active = max_active
        self.proxies = proxies
        self.on_reject = on_reject
        self.active: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLIMITED:
            await self.app(scope, receive, send)
            return
        client = client_address(scope, self.proxies)
        if self.buckets is not None:
            wait = self.buckets.take(client)
            if wait > 0:
                self.on_reject("rate_limited")
                detail = (
                    f"more than {self.buckets.rate:g} requests/s from this client "
                    "(IMGCLF_CLIENT_RATE): retry after the Retry-After delay"
                )
                await _too_many("rate_limited", detail, wait)(scope, receive, send)
                return
        if self.max_active and self.active.get(client, 0) >= self.max_active:
            self.on_reject("client_busy")
            detail = (
                f"this client already has {self.max_active} requests in progress "
                "(IMGCLF_CLIENT_MAX_ACTIVE)"
            )
            await _too_many("client_busy", detail, 1)(scope, receive, send)
            return
        self.active[client] = self.active.get(client, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.active[client] - 1
            if left:
                self.active[client] = left
            else:
                del self.active[client]


class BodyBudget:
    """Body bytes held in memory by all requests at once, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class BodyHold:
    """One request's share of a :class:`BodyBudget`, given back by :meth:`release`.

    ``declared`` (the ``Content-Length``, capped at what the request may send) is
    taken up front; a body without a length (chunked) takes its chunks as they come.
    """

    def __init__(self, budget: BodyBudget, declared: int) -> None:
        self.budget = budget
        self.held = 0
        self.declared = declared

    def start(self) -> bool:
        if not self.budget.take(self.declared):
            return False
        self.held = self.declared
        return True

    async def meter(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``stream``, taking budget for whatever goes past the declared length."""
        seen = 0
        async for chunk in stream:
            seen += len(chunk)
            extra = seen - self.held
            if extra > 0:
                if not self.budget.take(extra):
                    raise BodyBudgetExceededError
                self.held += extra
            yield chunk

    def release(self) -> None:
        self.budget.give(self.held)
        self.held = 0


class BodyBudgetExceededError(Exception):
    """A body without a length grew past the process-wide budget while it was read."""
