"""The built-in demo app, served when no MODULE:CALLABLE is given: shows the request and which worker ran it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from html import escape
from typing import Any

_SHOWN = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_PROTOCOL",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "REMOTE_ADDR",
    "SERVER_NAME",
    "SERVER_PORT",
    "wsgi.url_scheme",
)


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body_size = len(environ["wsgi.input"].read())
    session = environ.get("gateway.session")
    visits = ""
    if session is not None:
        # A per-visitor counter: the session is loaded and stored by the event loop, shared by every worker.
        session["visits"] = session.get("visits", 0) + 1
        visits = f"<p>You have seen this page <b id=visits>{session['visits']}</b> time(s) in this session.</p>"
    rows = "".join(f"<tr><th>{escape(key)}</th><td>{escape(str(environ.get(key, '')))}</td></tr>" for key in _SHOWN)
    headers = "".join(
        f"<tr><th>{escape(key[5:].replace('_', '-').title())}</th><td>{escape(value)}</td></tr>"
        for key, value in sorted(environ.items())
        if key.startswith("HTTP_")
    )
    page = (
        "<!doctype html><meta charset=utf-8><title>gateway demo</title>"
        "<h1>It works: served by the gateway</h1>"
        f"<p>Worker process <b>{os.getpid()}</b> ran this request; its body had {body_size} bytes.</p>{visits}"
        f"<h2>Request</h2><table>{rows}</table><h2>Headers</h2><table>{headers}</table>"
        "<p>Pass <code>MODULE:CALLABLE</code> on the command line to serve your own WSGI app.</p>\n"
    ).encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))])
    return [page]
