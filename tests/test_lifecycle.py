"""Worker lifecycle with real processes, real signals and concurrent load: every case of the lifecycle issue.

Each test starts its own gateway (uwsgi on a loopback port) and drives it with tests.load's threaded client.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.processes import GatewayProcess
from gateway.config.cli import build_config
from gateway.loop.listeners import bind
from gateway.master.server import Gateway
from gateway.protocols.uwsgi import encode_request
from tests.activation import start_activated
from tests.load import children, load, uwsgi_get
from tests.waiting import Gate, read_by_peer, wait_for

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

VERSIONED_APP = """
VERSION = "{version}"

def application(environ, start_response):
    body = VERSION.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def _start(
    tmp_path: Path, *args: str, app: str = "tests.apps:app", cwd: Path | None = None
) -> tuple[GatewayProcess, int]:
    port = free_port()
    gateway = GatewayProcess(tmp_path, ["--uwsgi", f"127.0.0.1:{port}", *args, app], env=ENV, cwd=cwd).start()
    return gateway, port


def _pid(gateway: GatewayProcess) -> int:
    assert gateway.process is not None
    return gateway.process.pid


def _versioned_app(directory: Path, version: str) -> None:
    directory.mkdir(exist_ok=True)
    path = directory / "versioned.py"
    path.write_text(VERSIONED_APP.format(version=version))
    # A rewrite within the same second must still look changed to the import system's cache check.
    stamp = time.time() + (1 if version != "1" else 0)
    os.utime(path, (stamp, stamp))


def test_sigkilled_worker_fails_only_its_request_and_is_replaced(tmp_path: Path) -> None:
    gateway, port = _start(tmp_path, "--workers", "2")
    try:
        with load(port, "/hello", concurrency=3, seconds=3) as result:
            wait_for(lambda: result.statuses[200] >= 10, 10, "the load under way")
            status, _, _ = uwsgi_get(port, "/crash")
        assert status == 502
        assert result.total > 50
        assert result.failures == 0, (result.statuses, result.errors[:3])
        wait_for(lambda: len(children(_pid(gateway))) == 2, 10, "the pool back to 2 workers")
        assert "died while running GET /crash" in gateway.log_text()
    finally:
        gateway.stop()


def test_timeout_answers_504_and_replaces_the_worker(tmp_path: Path) -> None:
    gateway, port = _start(tmp_path, "--workers", "1", "--timeout", "1")
    try:
        before = children(_pid(gateway))
        started = time.monotonic()
        status, _, _ = uwsgi_get(port, "/sleep", "s=30")
        elapsed = time.monotonic() - started
        assert status == 504
        assert elapsed < 1 + 2, elapsed
        wait_for(lambda: len(children(_pid(gateway)) - before) == 1, 10, "a replacement worker")
        assert uwsgi_get(port, "/hello")[2] == b"hello"
        log = gateway.log_text()
        assert "over --timeout 1 s: answered 504" in log
        assert f"worker {next(iter(before))} ran GET /sleep?s=30 for" in log
    finally:
        gateway.stop()


def test_max_requests_recycles_without_a_single_failure(tmp_path: Path) -> None:
    gateway, port = _start(tmp_path, "--workers", "2", "--max-requests", "100", "--max-requests-jitter", "20")
    try:
        with load(port, "/echo", concurrency=6, requests=2000) as result:
            pass
        assert result.total == 2000
        assert result.failures == 0, (result.statuses, result.errors[:3])
        assert gateway.log_text().count("(--max-requests)") >= 2000 // 120 - 1
        wait_for(lambda: len(children(_pid(gateway))) == 2, 10, "the pool at 2 workers")
    finally:
        gateway.stop()


def test_max_rss_recycles_a_worker_between_requests(tmp_path: Path) -> None:
    gateway, port = _start(tmp_path, "--workers", "1", "--max-rss", "80")
    try:
        first = uwsgi_get(port, "/grow", "mb=100")
        assert first[0] == 200
        grown_pid = json.loads(first[2])["pid"]
        wait_for(lambda: grown_pid not in children(_pid(gateway)), 10, "the grown worker to exit")
        assert len(children(_pid(gateway))) == 1
        second = uwsgi_get(port, "/grow", "mb=1")
        assert json.loads(second[2])["pid"] != grown_pid
        assert "over --max-rss 80 MiB" in gateway.log_text()
    finally:
        gateway.stop()


def test_queued_request_whose_client_left_never_reaches_a_worker(tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    gateway, port = _start(tmp_path, "--workers", "1", "--access-log", str(access))
    try:
        gate = Gate(tmp_path)
        with load(port, gate.path(), concurrency=1, requests=1):
            gate.wait_started()  # the only worker is busy
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(
                    encode_request({"REQUEST_METHOD": "GET", "PATH_INFO": "/echo", "QUERY_STRING": "tag=dropped"})
                )
                wait_for(read_by_peer(sock), 5, "the gateway to read the request")  # queued
            gate.release()  # the client has gone; now the worker is free
        assert uwsgi_get(port, "/hello")[2] == b"hello"
        wait_for(lambda: "/hello" in access.read_text(), 5, "the access log line of /hello")
        log = access.read_text()
        assert "/hold" in log
        assert "tag=dropped" not in log, "the abandoned request reached a worker"
    finally:
        gateway.stop()


def test_sighup_reload_under_load_fails_nothing_and_serves_new_code(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    _versioned_app(app_dir, "1")
    gateway, port = _start(tmp_path, "--workers", "2", app="versioned:application", cwd=app_dir)
    try:
        with load(port, "/", concurrency=4, seconds=25) as result:
            for round_number in range(2, 5):
                previous = str(round_number - 1).encode()
                # Each reload happens under load, once the one before it has completed: its code serves and the
                # workers it replaced have left.
                wait_for(
                    lambda version=previous: result.bodies[version] >= 20 and len(children(_pid(gateway))) == 2,
                    20,
                    f"version {previous!r} alone serving the load",
                )
                _versioned_app(app_dir, str(round_number))
                os.kill(_pid(gateway), signal.SIGHUP)
            wait_for(lambda: result.bodies[b"4"] >= 20, 20, "the last reloaded code serving the load")
            result.stop()
        assert result.failures == 0, (result.statuses, result.errors[:3])
        assert set(result.bodies) == {str(version).encode() for version in range(1, 5)}
        assert gateway.log_text().count("received SIGHUP: reloading") == 3
        wait_for(lambda: len(children(_pid(gateway))) == 2, 10, "old workers gone after the reloads")
    finally:
        gateway.stop()


def test_reload_with_code_that_cannot_be_imported_keeps_the_old_workers(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    _versioned_app(app_dir, "1")
    gateway, port = _start(tmp_path, "--workers", "2", app="versioned:application", cwd=app_dir)
    try:
        (app_dir / "versioned.py").write_text("def application(:\n")  # a syntax error
        os.kill(_pid(gateway), signal.SIGHUP)
        # Both new workers fail, each on its own time (the second may still be importing when the first gives up).
        wait_for(lambda: gateway.log_text().count("reload abandoned") == 2, 15, "both new workers to fail")
        with load(port, "/", concurrency=2, requests=200) as result:
            pass
        assert result.failures == 0, (result.statuses, result.errors[:3])
        assert set(result.bodies) == {b"1"}
        assert len(children(_pid(gateway))) == 2
    finally:
        gateway.stop()


def test_full_queue_answers_503_at_once(tmp_path: Path) -> None:
    gateway, port = _start(tmp_path, "--workers", "1", "--queue-size", "1")
    try:
        gate = Gate(tmp_path)
        with load(port, gate.path(), concurrency=1, requests=1) as holder:
            gate.wait_started()  # the only worker is busy
            with socket.create_connection(("127.0.0.1", port), timeout=10) as queued:
                queued.sendall(encode_request({"REQUEST_METHOD": "GET", "PATH_INFO": "/hello"}))
                wait_for(read_by_peer(queued), 5, "the gateway to read the request")  # it waits in the queue
                # Answered while the worker is still held: refused by the full queue, not served late.
                status, headers, _ = uwsgi_get(port, "/hello", timeout=10)
                gate.release()
                reply = b""
                while chunk := queued.recv(4096):
                    reply += chunk
        assert status == 503
        assert headers.get("Retry-After") == "1"
        assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"hello")
        assert holder.statuses[200] == 1
        assert "(--queue-size): answered 503" in gateway.log_text()
    finally:
        gateway.stop()


def test_queue_timeout_answers_503(tmp_path: Path) -> None:
    gateway, port = _start(tmp_path, "--workers", "1", "--queue-timeout", "0.5")
    try:
        gate = Gate(tmp_path)
        with load(port, gate.path(), concurrency=1, requests=1):
            gate.wait_started()
            started = time.monotonic()
            # Answered while the only worker is still held: only the queue timeout can have answered it.
            status, _, _ = uwsgi_get(port, "/hello", timeout=10)
            waited = time.monotonic() - started
            gate.release()
        assert status == 503
        assert waited >= 0.5, "not before --queue-timeout"
        assert "(--queue-timeout 0.5 s): answered 503" in gateway.log_text()
    finally:
        gateway.stop()


def test_pool_grows_under_load_and_shrinks_when_idle(tmp_path: Path) -> None:
    gateway, port = _start(tmp_path, "--workers", "1:3", "--scale-down-after", "1")
    try:
        assert len(children(_pid(gateway))) == 1
        with load(port, "/sleep?s=0.5", concurrency=4, seconds=15) as result:  # until the pool has grown
            wait_for(lambda: len(children(_pid(gateway))) == 3, 10, "the pool to grow to its maximum")
            result.stop()
        assert result.failures == 0, (result.statuses, result.errors[:3])
        wait_for(lambda: len(children(_pid(gateway))) == 1, 10, "the pool to shrink back to its minimum")
        assert "growing the pool to 3" in gateway.log_text()
    finally:
        gateway.stop()


def test_a_burst_of_slow_requests_grows_the_pool_to_its_maximum(tmp_path: Path) -> None:
    # Eight 2 s requests at 2:4: with --pipeline 2 (the default) most of them wait inside busy workers rather than
    # in the queue; the pool must still grow by all of them, while the burst lasts (4 s at 4 workers, 6 s at 3).
    gateway, port = _start(tmp_path, "--workers", "2:4", "--scale-down-after", "30")
    try:
        with load(port, "/sleep?s=2", concurrency=8, requests=8) as result:
            wait_for(lambda: len(children(_pid(gateway))) == 4, 4, "the pool to grow to 4 during the burst")
        assert result.failures == 0, (result.statuses, result.errors[:3])
        assert "growing the pool to 4" in gateway.log_text()
    finally:
        gateway.stop()


def test_sigttin_and_sigttou_add_and_remove_a_worker(tmp_path: Path) -> None:
    gateway, port = _start(tmp_path, "--workers", "1")
    try:
        os.kill(_pid(gateway), signal.SIGTTIN)
        wait_for(lambda: len(children(_pid(gateway))) == 2, 10, "a second worker")
        os.kill(_pid(gateway), signal.SIGTTOU)
        wait_for(lambda: len(children(_pid(gateway))) == 1, 10, "back to one worker")
        assert uwsgi_get(port, "/hello")[2] == b"hello"
    finally:
        gateway.stop()


def test_reload_option_picks_up_an_edited_file(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    _versioned_app(app_dir, "1")
    gateway, port = _start(tmp_path, "--workers", "1", "--reload", app="versioned:application", cwd=app_dir)
    try:
        assert uwsgi_get(port, "/")[2] == b"1"
        wait_for(lambda: "--reload: watching Python files" in gateway.log_text(), 10, "the watcher set up")
        _versioned_app(app_dir, "2")
        wait_for(lambda: uwsgi_get(port, "/")[2] == b"2", 15, "the edited code to serve")
        assert "--reload: versioned.py changed" in gateway.log_text()
    finally:
        gateway.stop()


def test_sigquit_stops_at_once(tmp_path: Path) -> None:
    gateway, port = _start(tmp_path, "--workers", "1", "--graceful-timeout", "30")
    gate = Gate(tmp_path)
    with load(port, gate.path(), concurrency=1, requests=1) as result:
        gate.wait_started()
        started = time.monotonic()
        os.kill(_pid(gateway), signal.SIGQUIT)
        assert gateway.process is not None
        assert gateway.process.wait(10) == 0
        assert time.monotonic() - started < 5
    assert result.statuses[200] == 0


def test_access_log_lines_and_sigusr1_reopen(tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    gateway, port = _start(tmp_path, "--workers", "1", "--access-log", str(access))
    try:
        uwsgi_get(port, "/echo", "a=1")
        wait_for(lambda: access.exists() and access.read_text(), 5, "an access log line")
        line = access.read_text().splitlines()[0]
        worker = next(iter(children(_pid(gateway))))
        assert line.startswith("127.0.0.1 - - [")
        assert '"GET /echo?a=1 HTTP/1.1" 200 ' in line
        assert line.endswith(f"worker={worker}")
        access.rename(tmp_path / "access.log.1")
        os.kill(_pid(gateway), signal.SIGUSR1)
        wait_for(access.exists, 5, "the access log reopened")
        uwsgi_get(port, "/status", "code=404")
        wait_for(lambda: " 404 " in access.read_text(), 5, "the next line in the new file")
    finally:
        gateway.stop()


def test_pidfile_and_process_titles(tmp_path: Path) -> None:
    pidfile = tmp_path / "gateway.pid"
    gateway, _ = _start(tmp_path, "--workers", "1", "--pidfile", str(pidfile))
    try:
        assert pidfile.read_text().strip() == str(_pid(gateway))
        master_title = Path(f"/proc/{_pid(gateway)}/cmdline").read_bytes()
        assert master_title.startswith(b"gateway master [tests.apps:app]")
        worker = next(iter(children(_pid(gateway))))
        assert Path(f"/proc/{worker}/cmdline").read_bytes().startswith(b"gateway worker [tests.apps:app]")
    finally:
        gateway.stop()
    assert not pidfile.exists()


@pytest.mark.parametrize(
    ("args", "policy"), [((), os.SCHED_BATCH), (("--worker-scheduling", "normal"), os.SCHED_OTHER)]
)
def test_workers_yield_to_the_loop_under_batch_scheduling_unless_told_otherwise(
    tmp_path: Path, args: tuple[str, ...], policy: int
) -> None:
    gateway, port = _start(tmp_path, "--workers", "1", *args)
    try:
        assert uwsgi_get(port, "/echo", "a=1")[0] == 200
        worker = next(iter(children(_pid(gateway))))
        assert os.sched_getscheduler(worker) == policy
        assert os.sched_getscheduler(_pid(gateway)) == os.SCHED_OTHER  # the loop keeps the default policy
    finally:
        gateway.stop()


def test_group_is_dropped_after_binding(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the suite runs as root (make test on a fresh Debian machine)"
    nogroup = grp.getgrnam("nogroup").gr_gid
    socket_path = tmp_path / "app.sock"
    gateway = GatewayProcess(
        tmp_path,
        ["--uwsgi", f"unix:{socket_path}", "--workers", "1", "--group", "nogroup", "tests.apps:app"],
        env=ENV,
    ).start()
    try:
        for pid in (_pid(gateway), *children(_pid(gateway))):
            status = Path(f"/proc/{pid}/status").read_text()
            gid_line = next(line for line in status.splitlines() if line.startswith("Gid:"))
            assert gid_line.split()[1:] == [str(nogroup)] * 4
        assert socket_path.stat().st_gid == nogroup
    finally:
        gateway.stop()


def test_user_is_dropped_after_binding(tmp_path: Path) -> None:
    """As nobody: the processes run with its uid, or, where nobody cannot reach the interpreter (Python under
    /root, mode 700, as on this project's machines), start-up fails with a message that says why."""
    nobody = pwd.getpwnam("nobody")
    interpreter = Path(sys.executable).resolve()
    reachable = all(os.stat(parent).st_mode & 0o001 for parent in interpreter.parents)
    tmp_path.chmod(0o777)
    socket_path = tmp_path / "app.sock"
    root_only = tmp_path / "root-only"  # as /run is: nobody cannot remove the socket file from it at exit
    root_only.mkdir(mode=0o755)
    kept_path = root_only / "kept.sock"
    args = ["--uwsgi", f"unix:{socket_path}", "--uwsgi", f"unix:{kept_path}", "--workers", "1", "--user", "nobody"]
    args.append("tests.apps:app")
    if not reachable:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *args], env=ENV, capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 3
        assert "cannot start a worker" in result.stderr
        assert "Permission denied" in result.stderr
        assert "Traceback" not in result.stderr
        return
    gateway = GatewayProcess(tmp_path, args, env=ENV).start()
    try:
        for pid in (_pid(gateway), *children(_pid(gateway))):
            status = Path(f"/proc/{pid}/status").read_text()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
        assert socket_path.stat().st_uid == nobody.pw_uid
        assert f"{kept_path} will stay after exit" in gateway.log_text()
    finally:
        gateway.stop()
    assert not socket_path.exists() and kept_path.exists()
    assert "could not remove socket file" not in gateway.log_text()
    GatewayProcess(tmp_path / "again", args, env=ENV).start().stop()  # the next start replaces the stale file


def test_a_socket_file_the_user_cannot_remove_is_named_at_start_and_left_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The decision of the test above, in-process, for machines where nobody cannot reach the interpreter: the
    privilege calls do nothing here, and the directories answer as they would answer nobody."""
    root_only, own = tmp_path / "root-only", tmp_path / "own"
    root_only.mkdir()
    own.mkdir()
    kept, removed = root_only / "kept.sock", own / "app.sock"
    config = build_config(["--uwsgi", f"unix:{kept}", "--uwsgi", f"unix:{removed}", "--user", "nobody"])
    gateway = Gateway(config)
    gateway.listeners = [bind(listen, 16, None) for listen in config.listeners]
    for call in ("setgid", "setuid", "initgroups", "chown"):
        monkeypatch.setattr(os, call, lambda *args: None)
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != root_only)
    with caplog.at_level(logging.INFO):
        gateway._drop_privileges()
        for listener in gateway.listeners:
            listener.close()
    assert f"{kept} will stay after exit" in caplog.text
    assert "could not remove socket file" not in caplog.text
    assert kept.exists() and not removed.exists()


def test_socket_activation_and_sd_notify(tmp_path: Path) -> None:
    """Run as systemd would: the listening socket at fd 3 with LISTEN_* set, NOTIFY_SOCKET to report to."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    notify_path = str(tmp_path / "notify.sock")
    notifications = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notifications.bind(notify_path)
    notifications.settimeout(20)
    process = start_activated(
        listener, "uwsgi", ["--workers", "1", "tests.apps:app"], {**ENV, "NOTIFY_SOCKET": notify_path},
        tmp_path / "gateway.log",
    )  # fmt: skip
    try:
        assert b"READY=1" in notifications.recv(1024)
        assert uwsgi_get(port, "/hello")[2] == b"hello"
        process.send_signal(signal.SIGTERM)
        assert b"STOPPING=1" in notifications.recv(1024)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        notifications.close()
    assert "socket activation: uwsgi socket 127.0.0.1" in (tmp_path / "gateway.log").read_text()


def test_debug_shows_the_traceback_only_when_asked(tmp_path: Path) -> None:
    gateway, port = _start(tmp_path, "--workers", "1", "--debug")
    try:
        status, _, body = uwsgi_get(port, "/error")
        assert status == 500
        assert b"Traceback" in body
        assert b"the app failed on purpose" in body
    finally:
        gateway.stop()


@pytest.mark.parametrize("example", ["deploy/systemd/gateway.service", "deploy/supervisor/gateway.conf"])
def test_example_deployment_files_use_real_options(example: str) -> None:
    """The documented examples must run what the CLI accepts: their command line is parsed for real."""
    text = (ROOT / example).read_text()
    line = next(line for line in text.splitlines() if line.startswith(("ExecStart=", "command=")))
    argv = line.split("=", 1)[1].split()
    module = argv.index("gateway")
    config = build_config(argv[module + 1 :])
    assert config.listeners
    assert config.app == "myapp.wsgi:application"
