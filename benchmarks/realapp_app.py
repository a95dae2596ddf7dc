"""A small real application, as a new user would write one: what the real-app benchmark serves on every server.

| route | what it does |
|---|---|
| ``page`` | a Jinja2 template rendering 50 rows read from sqlite (a connection per thread, opened lazily) |
| ``io`` | waits 10 ms, as a page waiting on a database or a service does (``time.sleep`` frees the GIL as I/O does) |
| ``file`` | a 10 MiB file returned through ``wsgi.file_wrapper`` (or iterated in 64 KiB blocks where there is none) |

Jinja2 comes from the benchmarks' own dependencies (in our venv and in the peers' one). The database and the file
are made once per machine under ``benchmarks/.work/realapp-data`` (``REALAPP_DATA`` overrides), by whichever
process gets there first: an atomic rename, so concurrent workers never see half a file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jinja2

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

ROWS = 50
IO_SECONDS = 0.010
FILE_SIZE = 10 << 20
DATA = Path(os.environ.get("REALAPP_DATA", Path(__file__).resolve().parent / ".work" / "realapp-data"))

TEMPLATE = jinja2.Environment(autoescape=True).from_string(
    """<!doctype html>
<html><head><title>{{ title }}</title></head>
<body>
<h1>{{ title }}</h1>
<table>
<tr><th>id</th><th>name</th><th>email</th><th>balance</th></tr>
{% for row in rows %}<tr class="{{ loop.cycle('odd', 'even') }}"><td>{{ row[0] }}</td><td>{{ row[1] | title }}</td>
<td>{{ row[2] }}</td><td>{{ "%.2f" | format(row[3]) }}</td></tr>
{% endfor %}</table>
<p>{{ rows | length }} rows</p>
</body></html>
"""
)

_local = threading.local()


def _make_once(path: Path, write: Callable[[Path], None]) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        write(partial)
        os.replace(partial, path)
    return path


def _write_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT, balance REAL)")
        db.executemany(
            "INSERT INTO users VALUES (?, ?, ?, ?)",
            [(i, f"user number {i}", f"user{i}@example.com", i * 3.25) for i in range(1, 1001)],
        )
    db.close()


def _write_file(path: Path) -> None:
    block = bytes(range(256)) * 256
    with path.open("wb") as out:
        for _ in range(FILE_SIZE // len(block)):
            out.write(block)


def _database() -> sqlite3.Connection:
    db: sqlite3.Connection | None = getattr(_local, "db", None)
    if db is None:
        path = _make_once(DATA / "app.sqlite3", _write_database)
        db = _local.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    return db


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).rstrip("/")
    route = path.rsplit("/", 1)[-1]
    if route == "hello":  # what the harness asks every server before measuring it
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "12")])
        return [b"Hello world\n"]
    if route == "page":
        offset = int(time.monotonic() * 1000) % (1000 - ROWS)
        rows = _database().execute("SELECT * FROM users WHERE id > ? ORDER BY id LIMIT ?", (offset, ROWS)).fetchall()
        body = TEMPLATE.render(title="Users", rows=rows).encode()
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]
    if route == "io":
        time.sleep(IO_SECONDS)
        body = b"waited 10 ms\n"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if route == "file":
        file_path = _make_once(DATA / "download.bin", _write_file)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(FILE_SIZE))])
        handle = file_path.open("rb")
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None:
            return wrapper(handle, 1 << 16)  # type: ignore[no-any-return]
        return _blocks(handle)
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [b"not found\n"]


def _blocks(handle: Any) -> Iterable[bytes]:
    with handle:
        while block := handle.read(1 << 16):
            yield block
