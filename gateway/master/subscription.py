"""``--subscribe SERVER=KEY``: the gateway announces its uwsgi listener to uWSGI FastRouters, as uWSGI's own nodes do.

A FastRouter with ``--fastrouter-subscription-server`` balances each domain (KEY) over the nodes that subscribed
to it and forgets a node it has not heard from within its tolerance (17 s by default). So the gateway sends
uWSGI's subscription packet (``encode_subscription``: a uwsgi packet with modifier1 224) over UDP once its workers
are ready, again every ``--subscribe-interval``, and an unsubscription (modifier2 1) first thing when it is told
to stop, so that the router stops sending before the listener closes; a reload (SIGHUP) keeps the subscription.

Each router gets its own connected UDP socket: the kernel then reports a router that is down (an ICMP "port
unreachable", on the next send) and the gateway logs one warning per interval and keeps trying, since a router
that comes back must learn about us again. Names are resolved once, at start: one that does not resolve is a
start-up error naming it. A remote router that is down may send no ICMP at all, and UDP cannot tell then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.config.addresses import Address, Subscription
from gateway.config.errors import ConfigError
from gateway.protocols.uwsgi import encode_subscription

log = logging.getLogger("gateway.subscription")

_WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 - what a listener bound to every interface reads as


@dataclass(slots=True)
class _Router:
    subscription: Subscription
    sock: socket.socket
    #: What this router is told to connect to (the listener's address as seen from the router's side).
    address: str
    #: The last announcement failed: say so once it gets through again.
    failing: bool = False


def announced_address(listener: Address, source_host: str) -> str:
    """The address a router must connect to: the uwsgi listener's, with a wildcard host replaced by the address
    this host sends from towards the router (so ``--uwsgi 0.0.0.0:0`` announces something reachable)."""
    if listener.path is not None:
        return listener.path
    host = listener.host or ""
    if host in _WILDCARDS:
        host = source_host
    return f"[{host}]:{listener.port}" if ":" in host else f"{host}:{listener.port}"


class Subscriber:
    """The subscriptions of one gateway: resolved and connected at start, then announced until ``close``."""

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        listener: Address,
        *,
        interval: float,
    ) -> None:
        self.interval = interval
        self._cores: Callable[[], int] = lambda: 1
        self._load: Callable[[], int] = lambda: 0
        self._task: asyncio.Task[None] | None = None
        self.routers: list[_Router] = []
        try:
            for subscription in subscriptions:
                self.routers.append(self._connect(subscription, listener))
        except ConfigError:
            self.close()
            raise

    @staticmethod
    def _connect(subscription: Subscription, listener: Address) -> _Router:
        try:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(
                subscription.host, subscription.port, type=socket.SOCK_DGRAM
            )[0]
        except (socket.gaierror, UnicodeError) as err:
            raise ConfigError(
                f"--subscribe {subscription}: the router {subscription.server} cannot be resolved ({err})"
            ) from None
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.connect(sockaddr)  # no packet: it only fixes the peer, so the kernel reports a refusal to us
            source = sock.getsockname()[0]
        except OSError as err:
            sock.close()
            raise ConfigError(f"--subscribe {subscription}: cannot reach {subscription.server}: {err}") from None
        return _Router(subscription, sock, announced_address(listener, source))

    def start(self, *, cores: Callable[[], int], load: Callable[[], int]) -> None:
        """Announce now (the workers are ready), then every interval: ``cores`` is sent as the number of workers
        (and as the weight, so a router's weighted round robin sends a larger gateway more), ``load`` as the
        requests in flight and waiting."""
        self._cores, self._load = cores, load
        for router in self.routers:
            log.info(
                "subscribing %s to the router %s under %r, every %g s",
                router.address,
                router.subscription.server,
                router.subscription.key,
                self.interval,
            )
        self.announce()
        self._task = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.announce()

    def announce(self, *, unsubscribe: bool = False) -> None:
        cores, load = self._cores(), self._load()
        for router in self.routers:
            packet = encode_subscription(
                router.subscription.key, router.address, cores=cores, load=load, weight=cores, unsubscribe=unsubscribe
            )
            self._send(router, packet, "unsubscription" if unsubscribe else "subscription")

    def _send(self, router: _Router, packet: bytes, what: str) -> None:
        try:
            router.sock.send(packet)
        except OSError as refused:
            # The error is the previous packet's (the router was not there): it is consumed now, so send this one.
            with contextlib.suppress(OSError):
                router.sock.send(packet)
            router.failing = True
            log.warning(
                "the router %s did not take our %s for %r (%s): is it running? Trying again in %g s",
                router.subscription.server,
                what,
                router.subscription.key,
                refused.strerror or refused,
                self.interval,
            )
            return
        if router.failing:
            router.failing = False
            log.info("the router %s is reachable again", router.subscription.server)

    def unsubscribe(self) -> None:
        """Stop renewing and tell every router to stop sending to us (before the listener closes)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.routers:
            log.info("unsubscribing from %s", ", ".join(str(router.subscription) for router in self.routers))
            self.announce(unsubscribe=True)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for router in self.routers:
            router.sock.close()
        self.routers = []
