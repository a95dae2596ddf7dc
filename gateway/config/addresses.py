"""Listen addresses and allow-lists: the text an operator writes for them, parsed into values the listeners bind.

Kept apart from the settings so that the listeners (event-loop side) and the settings' converters share one parser
of ``HOST:PORT``, ``unix:PATH`` and networks without either importing the other.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.config.errors import ConfigError

ProtocolName = Literal["fastcgi", "uwsgi"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: FastCGI and uwsgi carry no authentication, so a bare ``:PORT`` binds loopback only; listening on every
#: interface must be asked for explicitly (``0.0.0.0:9000``).
DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Address:
    """Where a listener binds: a TCP host and port, or a unix socket path."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``HOST:PORT``, ``:PORT``, ``[IPV6]:PORT`` or ``unix:PATH``."""
        if text.startswith("unix:"):
            path = text[5:]
            if not path:
                raise ConfigError(f"listen address {text!r} has no path; write unix:/run/app.sock")
            return cls(path=os.path.abspath(path))
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ConfigError(f"listen address {text!r} is not HOST:PORT, :PORT or unix:PATH")
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ConfigError(f"listen address {text!r}: port {port} is outside 0-65535")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(host=host or DEFAULT_HOST, port=port)

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        if self.host is not None and ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Listen:
    """One listener: a wire protocol on an address."""

    protocol: ProtocolName
    address: Address


@dataclass(frozen=True, slots=True)
class Subscription:
    """``--subscribe SERVER=KEY``: a uWSGI FastRouter's subscription server (UDP) and the domain it routes to us.

    Only the text is checked here; the host is resolved when the gateway starts, where a name that does not
    resolve is a start-up error naming it.
    """

    host: str
    port: int
    key: str

    @classmethod
    def parse(cls, text: str) -> Subscription:
        server, sep, key = text.partition("=")
        host, colon, port_text = server.rpartition(":")
        if not sep or not key or not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(
                f"--subscribe {text!r} is not SERVER=KEY, e.g. 127.0.0.1:2626=example.com (the router's "
                "subscription address, then the domain it routes)"
            )
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(host=host, port=int(port_text), key=key)

    @property
    def server(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.server}={self.key}"


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse allow-list entries (addresses or CIDR networks, each item possibly comma-separated), naming the bad one."""
    networks = []
    for item in items:
        for raw in item.split(","):
            part = raw.strip()
            if not part:
                continue
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError as err:
                raise ConfigError(f"allow-from entry {part!r} is not an IP address or network") from err
    return tuple(networks)
