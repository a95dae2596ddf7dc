"""``--metrics ADDR``: Prometheus' text exposition format over HTTP, written by ``prometheus_client``.

The numbers are the master's :data:`~gateway.loop.counters.COUNTERS` and what the pool and the listeners hold right
now (queue depth, workers by state, open connections); a custom collector turns them into metric families when
Prometheus scrapes, so serving requests costs no ``prometheus_client`` call at all, and the master sees every
request, so no multi-process collector is needed. The HTTP side is a few lines on the event loop (one GET, one
answer, close): prometheus_client's own server runs in a thread, which would read the loop's counters while the
loop changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.config.addresses import Address
from gateway.loop.counters import COUNTERS
from gateway.loop.front import FrontContext
from gateway.loop.relay import State
from gateway.master.stats import bound_address, close_server, open_server
from gateway.master.supervisor import Supervisor

log = logging.getLogger("gateway.metrics")

#: A scrape's request head must arrive within this, and be at most this large.
_READ_TIMEOUT = 10.0
_HEAD_LIMIT = 8192


class GatewayCollector(Collector):
    """The gateway's metrics, built from the counters and the pool at each scrape."""

    def __init__(self, pool: Supervisor, contexts: Sequence[FrontContext]) -> None:
        self.pool = pool
        self.contexts = contexts

    def collect(self) -> Iterator[Metric]:
        counters = COUNTERS
        requests = CounterMetricFamily(
            "gateway_requests", "Responses sent, by front protocol and status code", labels=["protocol", "status"]
        )
        for (protocol, status), count in sorted(counters.responses.items()):
            requests.add_metric([protocol, str(status)], count)
        yield requests
        duration = HistogramMetricFamily(
            "gateway_request_duration_seconds", "From the whole request read to the response's end"
        )
        buckets = [
            ("+Inf" if bound == float("inf") else repr(bound), count) for bound, count in counters.cumulative_buckets()
        ]
        duration.add_metric([], buckets, sum_value=counters.duration_sum)
        yield duration
        pool = self.pool
        in_flight = sum(len(relay.requests) for relay in pool.workers)
        yield GaugeMetricFamily("gateway_requests_in_flight", "Requests handed to a worker", value=in_flight)
        yield GaugeMetricFamily("gateway_queue_depth", "Requests waiting for a worker", value=len(pool.scheduler.queue))
        states = dict.fromkeys(("starting", "idle", "busy"), 0)
        for relay in pool.workers:
            if relay.state is not State.GONE:
                states[relay.state.value] += 1
        workers = GaugeMetricFamily("gateway_workers", "Worker processes by state", labels=["state"])
        for state, count in states.items():
            workers.add_metric([state], count)
        yield workers
        restarts = CounterMetricFamily("gateway_worker_restarts", "Workers replaced, by cause", labels=["cause"])
        for cause, count in counters.restarts.items():
            restarts.add_metric([cause], count)
        yield restarts
        connections = GaugeMetricFamily(
            "gateway_open_connections", "Connections open, by listener", labels=["listener"]
        )
        for context in self.contexts:
            connections.add_metric([context.label], len(context.connections))
        yield connections
        timeouts = CounterMetricFamily(
            "gateway_client_timeouts", "Connections closed by a client time limit, by kind", labels=["kind"]
        )
        for kind, count in counters.timeouts.items():
            timeouts.add_metric([kind], count)
        yield timeouts
        spooled = CounterMetricFamily(
            "gateway_spooled_bytes", "Bytes written to temporary files, by direction", labels=["direction"]
        )
        spooled.add_metric(["request"], counters.spooled_request_bytes)
        spooled.add_metric(["response"], counters.spooled_response_bytes)
        yield spooled
        operations = CounterMetricFamily(
            "gateway_session_operations", "Session store calls, by operation", labels=["operation"]
        )
        for operation, count in sorted(counters.session_operations.items()):
            operations.add_metric([operation], count)
        yield operations
        errors = CounterMetricFamily(
            "gateway_session_errors", "Session store calls that failed, by operation", labels=["operation"]
        )
        for operation, count in sorted(counters.session_errors.items()):
            errors.add_metric([operation], count)
        yield errors


class MetricsServer:
    """GET /metrics (or /) answers the exposition; anything else 404; one request per connection."""

    def __init__(self, pool: Supervisor, contexts: Sequence[FrontContext]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(pool, contexts))
        self.server: asyncio.Server | None = None
        self.path: str | None = None

    async def start(self, address: Address) -> None:
        self.server = await open_server(address, self._answer, "--metrics", limit=_HEAD_LIMIT)
        self.path = address.path
        log.info("Prometheus metrics on http://%s/metrics", bound_address(self.server, address))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if method == b"GET" and path in (b"/metrics", b"/"):
                body, status, kind = self.exposition(), b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body, status, kind = b"only GET /metrics is served\n", b"404 Not Found", b"text/plain"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )  # fmt: skip
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def close(self) -> None:
        close_server(self.server, self.path)
        self.server = None
