"""--preload through the real path: nginx → loop → a worker forked from the template that imported the app → nginx.

The test app records, at import, the pid of the process importing it (in its response and in ``imports.log``
beside it), so each test can prove who imported the code a worker runs: the template, once, never the worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from devstack.ports import free_port
from devstack.processes import stat_fields, tree_pids
from gateway.contract.exits import EXIT_APP_LOAD
from tests.http import request
from tests.load import children, load, uwsgi_get
from tests.stacks import ENV, NginxStack
from tests.waiting import wait_for

PRELOADED_APP = """
import json, os, time

VERSION = "{version}"
IMPORTED_IN = os.getpid()
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imports.log"), "a") as imports:
    imports.write(f"{{VERSION}} {{IMPORTED_IN}}\\n")


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path.endswith("/crash"):
        os._exit(1)
    if path.endswith("/sleep"):
        time.sleep(float(environ.get("QUERY_STRING") or 1))
    body = json.dumps({{"v": VERSION, "imported_in": IMPORTED_IN, "pid": os.getpid()}}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


def _write_app(directory: Path, version: str) -> None:
    directory.mkdir(exist_ok=True)
    path = directory / "preloaded.py"
    path.write_text(PRELOADED_APP.format(version=version))
    stamp = time.time() + int(version)  # a rewrite within the same second must still look changed
    os.utime(path, (stamp, stamp))


class PreloadStack(NginxStack):
    """A --preload gateway serving the app of ``app_dir``, behind nginx."""

    def __init__(self, tmp_path: Path, *args: str, app: str = "preloaded:application") -> None:
        self.app_dir = tmp_path / "app"
        _write_app(self.app_dir, "1")
        super().__init__(tmp_path, ["--preload", *args], app, cwd=self.app_dir)

    def get(self, path: str = "/") -> dict[str, Any]:
        reply = request(self.nginx.url, "GET", path)
        assert reply.status == 200, (reply.status, reply.body[:200], self.gateway.log_text()[-2000:])
        answer: dict[str, Any] = json.loads(reply.body)
        return answer

    def templates(self) -> set[int]:
        """The master's children: with --preload, only templates."""
        return children(self.master)

    def workers(self) -> set[int]:
        return {pid for template in self.templates() for pid in children(template)}

    def imports(self) -> list[str]:
        return (self.app_dir / "imports.log").read_text().splitlines()


def _title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_requests_are_served_by_workers_forked_from_the_template_that_imported_the_app(tmp_path: Path) -> None:
    stack = PreloadStack(tmp_path, "--workers", "2")
    with stack:
        (template,) = stack.templates()
        assert "gateway template" in _title(template)
        wait_for(lambda: len(stack.workers()) == 2, 10, "two forked workers")
        answers = [stack.get(path) for path in ("/", "/fcgik/", "/uwsgi/") for _ in range(10)]
        served_by = {answer["pid"] for answer in answers}
        assert {answer["imported_in"] for answer in answers} == {template}
        assert served_by <= stack.workers()
        assert template not in served_by
        assert all(int(stat_fields(pid)[1]) == template for pid in served_by)  # type: ignore[index]
        assert stack.imports() == [f"1 {template}"]  # once, by the template: no worker imported it
        pids = tree_pids(stack.master)
    assert stack.gateway.process is not None
    assert stack.gateway.process.returncode == 0
    assert not [pid for pid in pids if stat_fields(pid) is not None], "a process of the tree outlived the stop"


def test_a_crashed_worker_is_replaced_by_a_fork_without_a_new_import(tmp_path: Path) -> None:
    stack = PreloadStack(tmp_path, "--workers", "1")
    with stack:
        (template,) = stack.templates()
        first = stack.get()["pid"]
        assert request(stack.nginx.url, "GET", "/crash").status == 502
        wait_for(lambda: len(stack.workers() - {first}) == 1, 10, "a replacement worker")
        after = stack.get()
        assert after["pid"] != first
        assert after["imported_in"] == template
        assert stack.imports() == [f"1 {template}"]
        log = stack.gateway.log_text()
        assert f"worker {first} exited with status 1; starting a replacement" in log


def test_sighup_reloads_to_new_code_in_a_new_template_under_load(tmp_path: Path) -> None:
    stack = PreloadStack(tmp_path, "--workers", "2")
    with stack:
        (old_template,) = stack.templates()
        old_workers = stack.workers()
        with load(stack.uwsgi, "/", concurrency=3, seconds=20) as result:
            wait_for(lambda: result.statuses[200] >= 20, 10, "the load under way")
            _write_app(stack.app_dir, "2")
            stack.gateway.reload()
            wait_for(lambda: any(b'"v": "2"' in body for body in result.bodies), 15, "the new code answering")
            wait_for(
                lambda: old_template not in stack.templates() and len(stack.templates()) == 1,
                15,
                "the old template gone once its workers have",
            )
            wait_for(lambda: len(stack.workers()) == 2, 15, "two workers again")
            (new_template,) = stack.templates()
            count = result.statuses[200]
            wait_for(lambda: result.statuses[200] >= count + 20, 10, "more load on the new code")
            result.stop()
        assert result.failures == 0, (result.statuses, result.errors[:3])
        assert not stack.workers() & old_workers
        answer = stack.get()
        assert (answer["v"], answer["imported_in"]) == ("2", new_template)
        assert stack.imports() == [f"1 {old_template}", f"2 {new_template}"]


def test_sighup_with_code_that_cannot_be_imported_keeps_the_old_template_and_workers(tmp_path: Path) -> None:
    stack = PreloadStack(tmp_path, "--workers", "2")
    with stack:
        templates = stack.templates()
        wait_for(lambda: len(stack.workers()) == 2, 10, "two forked workers")
        workers = stack.workers()
        (stack.app_dir / "preloaded.py").write_text("def application(:\n")  # a syntax error
        stack.gateway.reload()
        wait_for(lambda: "reload abandoned" in stack.gateway.log_text(), 15, "the new template to fail")
        answers = [stack.get() for _ in range(20)]
        assert {answer["v"] for answer in answers} == {"1"}
        assert stack.templates() == templates
        assert stack.workers() == workers
        log = stack.gateway.log_text()
        assert log.count("reload abandoned") == 1
        assert "could not be loaded (see the template's error above); reload abandoned, the running workers" in log
        assert "SyntaxError" in log


def test_max_requests_recycles_forked_workers_without_a_failure(tmp_path: Path) -> None:
    stack = PreloadStack(tmp_path, "--workers", "2", "--max-requests", "10")
    with stack:
        (template,) = stack.templates()
        with load(stack.uwsgi, "/", concurrency=4, requests=200) as result:
            pass
        assert result.total == 200
        assert result.failures == 0, (result.statuses, result.errors[:3])
        served_by = {json.loads(body)["pid"] for body in result.bodies}
        assert len(served_by) >= 200 // 10 - 2
        assert stack.imports() == [f"1 {template}"]
        assert stack.gateway.log_text().count("(--max-requests)") >= 200 // 10 - 2
        wait_for(lambda: len(stack.workers()) == 2, 10, "the pool at 2 workers")


def test_timeout_stops_a_forked_worker_and_forks_a_replacement(tmp_path: Path) -> None:
    stack = PreloadStack(tmp_path, "--workers", "1", "--timeout", "1")
    with stack:
        wait_for(lambda: len(stack.workers()) == 1, 10, "one forked worker")
        (slow,) = stack.workers()
        started = time.monotonic()
        status, _, _ = uwsgi_get(stack.uwsgi, "/sleep", "30")
        assert status == 504
        assert time.monotonic() - started < 3
        wait_for(lambda: slow not in stack.workers() and len(stack.workers()) == 1, 10, "the worker replaced")
        assert json.loads(uwsgi_get(stack.uwsgi, "/")[2])["pid"] != slow


def test_threads_with_preload_run_requests_together(tmp_path: Path) -> None:
    stack = PreloadStack(tmp_path, "--workers", "1", "--threads", "4")
    with stack, ThreadPoolExecutor(4) as pool:
        started = time.monotonic()
        answers = list(pool.map(lambda _: stack.get("/fcgik/sleep?1"), range(4)))
        assert time.monotonic() - started < 2.5
        assert len({answer["pid"] for answer in answers}) == 1


def test_a_dead_template_is_replaced_while_its_workers_keep_serving(tmp_path: Path) -> None:
    stack = PreloadStack(tmp_path, "--workers", "1")
    with stack:
        (template,) = stack.templates()
        worker = stack.get()["pid"]
        os.kill(template, signal.SIGKILL)
        wait_for(lambda: template not in stack.templates() and len(stack.templates()) == 1, 10, "a new template")
        (replacement,) = stack.templates()
        assert stack.get()["pid"] == worker  # the orphaned worker still serves
        assert f"template {template} exited with signal 9" in stack.gateway.log_text()
        assert request(stack.nginx.url, "GET", "/crash").status == 502
        wait_for(lambda: "exited with an unknown status" in stack.gateway.log_text(), 10, "the orphan's exit seen")
        answer = stack.get()
        assert answer["pid"] != worker
        assert answer["imported_in"] == replacement
        assert stack.imports() == [f"1 {template}", f"1 {replacement}"]


def test_file_responses_and_sessions_work_the_same_with_preload(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    stack = PreloadStack(tmp_path, "--workers", "2", app="tests.apps:app")
    with stack:
        assert request(stack.nginx.url, "GET", "/fcgik/hello").body == b"hello"
        before = stack.gateway.open_files()
        for prefix in ("uwsgi", "fcgik"):
            reply = request(stack.nginx.url, "GET", f"/{prefix}/file?{urlencode({'path': str(big)})}")
            assert reply.status == 200
            assert hashlib.sha256(reply.body).digest() == hashlib.sha256(big.read_bytes()).digest()
        wait_for(lambda: stack.gateway.open_files() == before, 10, "the master's descriptors back to their count")
        first = request(stack.nginx.url, "GET", "/session/set?user=ada")
        match = re.search(r"gwsession=([^;]+)", first.header("Set-Cookie") or "")
        assert match is not None
        cookie = [("Cookie", f"gwsession={match.group(1)}")]
        pids = set()
        for index in range(6):
            reply = request(stack.nginx.url, "GET", f"/session/append?item={index}", headers=cookie)
            assert reply.status == 200
            pids.add(reply.json()["pid"])
        data = request(stack.nginx.url, "GET", "/session/get", headers=cookie).json()["data"]
        assert data == {"user": "ada", "items": [str(index) for index in range(6)]}
        assert pids == stack.workers(), "both forked workers saw the same session"


def test_reload_option_forks_the_edited_code_from_a_new_template(tmp_path: Path) -> None:
    stack = PreloadStack(tmp_path, "--workers", "1", "--reload")
    with stack:
        (template,) = stack.templates()
        assert stack.get()["v"] == "1"
        wait_for(lambda: "--reload: watching Python files" in stack.gateway.log_text(), 10, "the watcher set up")
        _write_app(stack.app_dir, "2")
        wait_for(lambda: json.loads(uwsgi_get(stack.uwsgi, "/")[2])["v"] == "2", 15, "the edited code to serve")
        answer = stack.get()
        assert answer["imported_in"] != template
        assert stack.imports() == [f"1 {template}", f"2 {answer['imported_in']}"]


def test_an_app_that_cannot_be_imported_by_the_template_stops_the_gateway_with_status_3(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    command = [sys.executable, "-m", "gateway", "--uwsgi", f"127.0.0.1:{free_port()}", "--preload", "missing:app"]
    result = subprocess.run(command, cwd=app_dir, env=ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_APP_LOAD
    assert "No module named 'missing'" in result.stderr
    assert f"looked up from {app_dir}" in result.stderr
    assert "could not be loaded (see the template's error above)" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_pool_grows_and_shrinks_by_forks_with_preload(tmp_path: Path) -> None:
    stack = PreloadStack(tmp_path, "--workers", "1:3", "--scale-down-after", "1")
    with stack:
        (template,) = stack.templates()
        wait_for(lambda: len(stack.workers()) == 1, 10, "one forked worker")
        # The load lasts until the pool has grown (bounded), not a fixed 4 s a busy machine may need for the forks.
        with load(stack.uwsgi, "/sleep?0.5", concurrency=4, seconds=15) as result:
            try:
                wait_for(lambda: len(stack.workers()) == 3, 10, "the pool to grow to its maximum")
            except AssertionError as err:  # say what the load got and what the gateway did
                raise AssertionError(
                    f"{err}: {result.statuses} {result.errors[:3]}\n{stack.gateway.log_text()[-3000:]}"
                ) from err
            result.stop()
        assert result.failures == 0, (result.statuses, result.errors[:3])
        wait_for(lambda: len(stack.workers()) == 1, 10, "the pool to shrink back to its minimum")
        assert stack.templates() == {template}
        assert stack.imports() == [f"1 {template}"]
        assert "growing the pool to 3" in stack.gateway.log_text()
