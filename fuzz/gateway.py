"""A structured mutation fuzzer against a running gateway, over FastCGI and uwsgi, with a byte-exact checker.

``python -m fuzz.gateway [--requests 100000] [--seconds 300]`` starts a gateway (two workers, loopback, free
ports, tests.apps:app) and, per protocol, sends ``--requests`` mutated requests: valid requests built from parts
(params, body, records, ids, aborts, CONTENT_LENGTH), then mutated (bytes flipped, cut, duplicated, spliced with
another request, records reordered, lengths changed), in batches of connections that send and go away. Meanwhile
a checker thread sends correct requests to ``/mirror`` over both protocols and compares every answer with the one
expected, byte for byte. At the end: the gateway must be alive, its log free of tracebacks, every checked answer
exact, and the master's descriptors back to their baseline (its RSS is reported next to its baseline).
Exit status 0 when all of that holds, 1 otherwise, with the first failures printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.hostile import rss
from devstack.ports import free_port
from devstack.processes import GatewayProcess
from gateway.protocols.fastcgi import (
    ClientConnection,
    EndRequest,
    Stdout,
    encode_abort,
    encode_begin,
    encode_params,
    encode_request,
    encode_stdin,
)
from gateway.protocols.uwsgi import encode_request as encode_uwsgi_request

BATCH = 40
PATHS = ["/hello", "/mirror", "/echo", "/read-all", "/nowhere"]


def params(path: str, query: str = "", body: bytes = b"", **extra: str) -> dict[str, str]:
    return {
        "REQUEST_METHOD": "POST" if body else "GET",
        "SCRIPT_NAME": path,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REQUEST_URI": f"{path}?{query}",
        "SERVER_NAME": "fuzz",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(body)) if body else "",
        **extra,
    }


def expected_mirror(query: str, body: bytes) -> bytes:
    mirrored = query.encode() + b"|" + body
    return b"200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(mirrored) + mirrored


# -- generation and mutation ---------------------------------------------------------------------------------------
def fastcgi_request(rng: random.Random) -> bytes:
    """One to four requests, valid but varied: ids, keep-conn, bodies, CONTENT_LENGTH lies, aborts, interleaving."""
    parts: list[bytes] = []
    for _ in range(rng.randint(1, 4)):
        request_id = rng.choice([1, 2, 3, rng.randint(1, 0xFFFF)])
        body = rng.randbytes(rng.choice([0, 0, 3, 100, 5000]))
        extra = {}
        if rng.random() < 0.2:
            extra["CONTENT_LENGTH"] = str(rng.choice([0, 1, len(body) + 5, max(len(body) - 1, 0), 10**12]))
        if rng.random() < 0.1:
            extra["HTTP_CONTENT_LENGTH"] = str(rng.randint(0, 99))
        p = params(rng.choice(PATHS), f"q={rng.randint(0, 99)}", body, **extra)
        records = [encode_begin(request_id, keep_conn=rng.random() < 0.7), encode_params(request_id, p)]
        records.append(encode_stdin(request_id, body, end=rng.random() < 0.9))
        if rng.random() < 0.15:
            records.insert(rng.randint(1, len(records)), encode_abort(request_id))
        parts.extend(records)
    if rng.random() < 0.3:
        rng.shuffle(parts)
    return b"".join(parts)


def uwsgi_request(rng: random.Random) -> bytes:
    body = rng.randbytes(rng.choice([0, 0, 3, 100, 5000]))
    extra = {}
    if rng.random() < 0.2:
        extra["CONTENT_LENGTH"] = str(rng.choice([0, 1, len(body) + 5, max(len(body) - 1, 0)]))
    if rng.random() < 0.1:
        extra["HTTP_CONTENT_LENGTH"] = str(rng.randint(0, 99))
    return encode_uwsgi_request(params(rng.choice(PATHS), f"q={rng.randint(0, 99)}", body, **extra), body)


def mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    """A few structured mutations of ``data`` (``other`` is another request to splice from)."""
    buffer = bytearray(data)
    for _ in range(rng.randint(0, 4)):
        if not buffer:
            break
        choice = rng.random()
        position = rng.randrange(len(buffer))
        if choice < 0.3:
            buffer[position] = rng.randrange(256)  # a byte flipped (a length, a type, an id, a name)
        elif choice < 0.45:
            del buffer[position:]  # cut short
        elif choice < 0.6:
            end = min(len(buffer), position + rng.randint(1, 64))
            buffer[position:position] = buffer[position:end]  # a stretch duplicated
        elif choice < 0.75:
            buffer[position:position] = other[: rng.randint(0, len(other))]  # spliced with another request
        elif choice < 0.85:
            buffer[position : position + 2] = rng.choice([b"\xff\xff", b"\x00\x00", b"\x7f\xff", b"\x80\x00"])
        else:
            buffer[position:position] = rng.randbytes(rng.randint(1, 32))  # garbage inserted
    return bytes(buffer)


# -- the checker ---------------------------------------------------------------------------------------------------
@dataclass
class Checker:
    fcgi_port: int
    uwsgi_port: int
    checked: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(7)  # noqa: S311  # seeded, to replay a run; nothing secret
        fcgi = socket.create_connection(("127.0.0.1", self.fcgi_port), timeout=30)
        try:
            while not self._stop.is_set():
                query, body = f"n={self.checked}", rng.randbytes(rng.choice([0, 10, 3000, 70000]))
                expected = expected_mirror(query, body)
                try:
                    got = self._fastcgi(fcgi, query, body)
                    if got != b"Status: " + expected:
                        self.failures.append(f"fastcgi {query}: {got[:120]!r}")
                    got = self._uwsgi(query, body)
                    if got != b"HTTP/1.1 " + expected:
                        self.failures.append(f"uwsgi {query}: {got[:120]!r}")
                except OSError as err:
                    self.failures.append(f"checker connection failed: {err!r}")
                    fcgi.close()
                    fcgi = socket.create_connection(("127.0.0.1", self.fcgi_port), timeout=30)
                self.checked += 2
        finally:
            fcgi.close()

    def _fastcgi(self, sock: socket.socket, query: str, body: bytes) -> bytes:
        sock.sendall(encode_request(1, params("/mirror", query, body), body, keep_conn=True))
        codec = ClientConnection()
        out = bytearray()
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("closed")
            for event in codec.receive_data(data):
                if isinstance(event, Stdout):
                    out += event.data
                elif isinstance(event, EndRequest):
                    return bytes(out)

    def _uwsgi(self, query: str, body: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.uwsgi_port), timeout=30) as sock:
            sock.sendall(encode_uwsgi_request(params("/mirror", query, body), body))
            out = bytearray()
            while chunk := sock.recv(1 << 16):
                out += chunk
            return bytes(out)

    def stop(self) -> None:
        self._stop.set()


# -- the run -------------------------------------------------------------------------------------------------------
def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def loop_tracebacks(log: str) -> int:
    """Tracebacks logged by the master (its loop), not by a worker's app."""
    count, role = 0, ""
    for line in log.splitlines():
        if line.startswith("20") and " [" in line:
            role = line.split(" [", 1)[1].split(" ", 1)[0]
        elif line.startswith("Traceback") and role != "worker":
            count += 1
    return count


def send_batch(port: int, payloads: list[bytes]) -> int:
    """Open a connection per payload, send it, give the gateway a moment, read what came, close. Returns how many
    payloads reached the gateway (connected, and sent without an error): only those count as fuzzed."""
    socks = []
    delivered = 0
    for payload in payloads:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            continue
        sock.setblocking(False)
        socks.append(sock)
        try:
            sock.send(payload)
        except OSError:  # BlockingIOError included: nothing of it was taken
            continue
        delivered += 1
    time.sleep(0.01)
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.recv(1 << 16)
        sock.close()
    return delivered


def run(requests: int, seconds: float, seed: int = 1) -> tuple[bool, str]:
    fcgi_port, uwsgi_port = free_port(), free_port()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    args = ["--fcgi", f"127.0.0.1:{fcgi_port}", "--uwsgi", f"127.0.0.1:{uwsgi_port}", "--workers", "2"]
    args += ["--header-timeout", "2", "--log-level", "warning", "tests.apps:app"]
    gateway = GatewayProcess(Path(tempfile.mkdtemp(prefix="fuzz-gateway-")), args, env=env).start()
    assert gateway.process is not None
    pid = gateway.process.pid
    rng = random.Random(seed)  # noqa: S311  # seeded, to replay a run; nothing secret
    checker = Checker(fcgi_port, uwsgi_port)
    thread = threading.Thread(target=checker.run, daemon=True)
    try:
        time.sleep(0.5)
        base_fds, base_rss = descriptors(pid), rss(pid)
        thread.start()
        sent = {"fastcgi": 0, "uwsgi": 0}
        undelivered = 0
        started = time.monotonic()
        deadline = started + seconds
        while min(sent.values()) < requests and time.monotonic() < deadline:
            for protocol, port, make in (("fastcgi", fcgi_port, fastcgi_request), ("uwsgi", uwsgi_port, uwsgi_request)):
                batch = [mutate(rng, make(rng), make(rng)) for _ in range(BATCH)]
                delivered = send_batch(port, batch)
                sent[protocol] += delivered
                undelivered += len(batch) - delivered
            if gateway.process.poll() is not None:
                break
        elapsed = time.monotonic() - started
        checker.stop()
        thread.join(30)
        alive = gateway.process.poll() is None
        # Mutated connections still open wait out --header-timeout (2 s) and the once-a-second sweep.
        deadline = time.monotonic() + 10
        while alive and descriptors(pid) > base_fds and time.monotonic() < deadline:
            time.sleep(0.2)
        fds, now_rss = (descriptors(pid), rss(pid)) if alive else (-1, -1)
        log = gateway.log_text()
        tracebacks = loop_tracebacks(log)
        report = (
            f"mutated requests: fastcgi {sent['fastcgi']}, uwsgi {sent['uwsgi']} in {elapsed:.0f} s "
            f"({sum(sent.values()) / max(elapsed, 1e-9):.0f}/s; {undelivered} more could not be sent); "
            f"checked answers {checker.checked}, "
            f"wrong {len(checker.failures)}; gateway alive {alive}; tracebacks in its log {tracebacks}; "
            f"master descriptors {base_fds} -> {fds}; master RSS {base_rss / 2**20:.1f} -> {now_rss / 2**20:.1f} MiB"
        )
        if checker.failures:
            report += "\nfirst wrong answers:\n  " + "\n  ".join(checker.failures[:5])
        ok = alive and not checker.failures and not tracebacks and fds <= base_fds and checker.checked > 0
        return ok, report
    finally:
        checker.stop()
        gateway.stop(timeout=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="mutated requests per protocol")
    parser.add_argument("--seconds", type=float, default=300.0, help="stop after this long in any case")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    ok, report = run(args.requests, args.seconds, args.seed)
    print(report, flush=True)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
