"""Who the client is behind a trusted proxy: ``X-Forwarded-For``/``-Proto`` and ``Forwarded`` (RFC 7239).

Headers are believed only when the connection comes from one of ``--forwarded-allow-ips`` (as gunicorn's and
uvicorn's option of that name): from anyone else they are the client's own claims, and a client could then
pick its REMOTE_ADDR or make a plain request look like HTTPS. The client is the rightmost address in the chain
that is not itself a trusted proxy (a client may put anything it likes on the left of what proxies append).
"""

from __future__ import annotations

import ipaddress

from gateway.config.addresses import IPNetwork


def trusted(host: str | None, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether ``host`` (None: a unix-socket peer, which only a local process can be) is a trusted proxy."""
    if not networks:
        return False
    if host is None:
        return True
    address = _address(host)
    return address is not None and any(address in network for network in networks)


def apply_forwarded(params: dict[str, str], networks: tuple[IPNetwork, ...]) -> None:
    """Rewrite REMOTE_ADDR and the scheme (HTTPS, REQUEST_SCHEME) from the forwarding headers in ``params``.

    Called only for a trusted peer. ``Forwarded`` wins over the ``X-Forwarded-*`` pair when both are present.
    """
    forwarded = params.get("HTTP_FORWARDED")
    if forwarded is not None:
        chain, protos = _parse_forwarded(forwarded)
    else:
        chain = [part.strip() for part in params.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        protos = [part.strip() for part in params.get("HTTP_X_FORWARDED_PROTO", "").split(",") if part.strip()]
    if chain:
        client = chain[0]
        for hop in reversed(chain):
            address = _address(hop)
            if address is None or not any(address in network for network in networks):
                client = hop
                break
        params["REMOTE_ADDR"] = client
        params.pop("REMOTE_PORT", None)
    if protos:
        scheme = protos[-1].lower()  # what the nearest proxy saw
        if scheme == "https":
            params["HTTPS"] = "on"
            params["REQUEST_SCHEME"] = "https"
        elif scheme == "http":
            params.pop("HTTPS", None)
            params["REQUEST_SCHEME"] = "http"


def _parse_forwarded(value: str) -> tuple[list[str], list[str]]:
    """The ``for`` and ``proto`` values of each element of a Forwarded header, in order (ports and the
    brackets and quotes of IPv6 nodes removed)."""
    chain: list[str] = []
    protos: list[str] = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, raw = pair.strip().partition("=")
            name = name.strip().lower()
            raw = raw.strip().strip('"')
            if name == "for" and raw:
                chain.append(_node_host(raw))
            elif name == "proto" and raw:
                protos.append(raw)
    return chain, protos


def _node_host(node: str) -> str:
    if node.startswith("["):
        return node[1 : node.find("]")] if "]" in node else node
    if node.count(":") == 1:
        return node.partition(":")[0]
    return node


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
