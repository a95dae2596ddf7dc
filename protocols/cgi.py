"""What FastCGI params and uwsgi vars have in common: CGI meta-variables (RFC 3875)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.protocols.errors import RemoteProtocolError


def merge_params(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The request's meta-variables as a dict.

    nginx passes a header that the client repeated as repeated ``HTTP_*`` variables; RFC 3875 (4.1.18) and
    every WSGI app expect one variable with the values joined by ", " (cookies by "; ", the only separator
    cookie parsers accept). Any other repeated name is configuration (``fastcgi_param`` given twice): the last
    one wins, as in PHP-FPM.
    """
    params = dict(pairs)
    if len(params) == len(pairs):
        return params  # no name repeated: the usual case, built in C
    params = {}
    for name, value in pairs:
        previous = params.get(name)
        if previous is not None and name.startswith("HTTP_"):
            separator = "; " if name == "HTTP_COOKIE" else ", "
            params[name] = previous + separator + value
        else:
            params[name] = value
    return params


def content_length(params: dict[str, str]) -> int | None:
    """CONTENT_LENGTH as a number: None when absent or empty, ValueError when it is not a decimal number."""
    raw = params.get("CONTENT_LENGTH")
    if not raw:
        return None
    if not raw.isdigit() or not raw.isascii():
        raise ValueError(f"CONTENT_LENGTH {raw[:40]!r} is not a decimal number")
    return int(raw)


#: A response head larger than this is refused by :func:`split_response_head` (the client side's bound).
MAX_RESPONSE_HEAD = 64 * 1024


def split_response_head(data: bytes) -> tuple[int, str, list[tuple[str, str]], int] | None:
    """The head of a response as the web server reads it: (status, reason, headers, offset of the body).

    Over FastCGI the head is CGI's (RFC 3875 6.2: the status in a ``Status:`` header, 200 when absent); over uwsgi
    it starts with an HTTP status line. None while the blank line ending the head has not arrived; a
    ``RemoteProtocolError`` for a head that is neither.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_RESPONSE_HEAD:
            raise RemoteProtocolError(f"response head larger than {MAX_RESPONSE_HEAD} bytes")
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    status, reason = 200, "OK"
    if lines and lines[0].startswith("HTTP/"):
        parts = lines.pop(0).split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise RemoteProtocolError(f"bad status line {parts!r}")
        status, reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise RemoteProtocolError(f"bad response header line {line!r}")
        if name.lower() == "status":
            code, _, text = value.strip().partition(" ")
            if not code.isdigit():
                raise RemoteProtocolError(f"bad Status header {value!r}")
            status, reason = int(code), text
        else:
            headers.append((name, value.strip()))
    return status, reason, headers, end + 4
