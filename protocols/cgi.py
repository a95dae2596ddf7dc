"""What FastCGI params and uwsgi vars have in common: CGI meta-variables (RFC 3875)."""

from __future__ import annotations

from collections.abc import Sequence


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
