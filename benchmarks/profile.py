"""``python -m benchmarks.profile``: where our gateway spends its time under load, per process.

Starts our gateway (and nothing else) behind the benchmark's nginx, loads one scenario with wrk, and meanwhile
samples the event loop's process and one worker with py-spy (installed into our virtualenv when missing). Prints
req/s, each process's CPU share (from /proc: a process at 100% is the bottleneck) and, per process, the
functions where samples land (self time) and the ones under which they land (inclusive time). This is how the
optimisations in RESULTS.md's history were found; run it before and after a change to the hot path.

    python -m benchmarks.profile --server ours-fcgi-keep --scenario hello -d 10
    python -m benchmarks.profile --server ours-http --attack direct-headers   # beside 1,000 slow clients
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import slowloris
from benchmarks.core import WORK_DIR, BenchError, log
from benchmarks.harness import ServerSpec, Stack, ensure_nginx, fresh_scratch, select_servers
from benchmarks.peers import Peers, ensure_peers
from benchmarks.procstats import machine_seconds, tree_pids
from benchmarks.throughput import select_scenarios
from benchmarks.wrk import ensure_wrk, run_wrk

_CLOCK_TICKS = 100  # USER_HZ, as /proc/PID/stat counts


def _ticks(pid: int) -> tuple[int, int]:
    """(user, system) CPU ticks of ``pid`` so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return 0, 0
    return int(fields[11]), int(fields[12])


def _ticks_by_command() -> dict[int, tuple[str, int]]:
    """Every process's (command name, CPU ticks so far), to see where the rest of the machine goes."""
    found: dict[int, tuple[str, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_bytes()
        except OSError:
            continue
        name = raw[raw.index(b"(") + 1 : raw.rindex(b")")].decode(errors="replace").split()[0]
        fields = raw.rsplit(b")", 1)[1].split()
        found[int(stat.parent.name)] = (name, int(fields[11]) + int(fields[12]))
    return found


def _faults(pid: int) -> int:
    """Minor page faults so far: a fresh page the kernel had to zero and map (memory given back and taken again)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[7])
    except (OSError, IndexError, ValueError):
        return 0


def _switches(pid: int) -> int:
    """Context switches so far, voluntary and not: each voluntary one is a sleep and a wake-up."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in lines if "ctxt_switches:" in line)


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if Path(found).exists():
        return found
    log("py-spy is missing: pip install py-spy")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True, timeout=600)
    return str(Path(sys.executable).with_name("py-spy"))


def _record(py_spy: str, pid: int, seconds: int, output: Path, native: bool) -> subprocess.Popen[bytes]:
    command = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250", "--format",
               "raw", "--output", str(output)]  # fmt: skip
    # --native needs the process stopped while it is sampled; Python frames alone can be read on the fly.
    command.append("--native" if native else "--nonblocking")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarize(collapsed: Path, top: int) -> list[str]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks ("a;b;c COUNT")."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [frame.split(" (")[0] + " (" + frame.rsplit("/", 1)[-1] if " (" in frame else frame
                  for frame in stack.split(";")]  # fmt: skip
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return ["  (no samples)"]
    lines = [f"  {total} samples; self time:"]
    lines += [f"    {count / total:6.1%}  {frame}" for frame, count in own.most_common(top)]
    lines.append("  inclusive time:")
    lines += [f"    {count / total:6.1%}  {frame}" for frame, count in inclusive.most_common(top)]
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server",
        default="ours-fcgi-keep",
        help="one of our rows (default ours-fcgi-keep); a peer's row (uwsgi, gunicorn...) with --no-profile",
    )
    parser.add_argument("--scenario", default="hello", help="a throughput scenario (default hello)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("-d", "--duration", type=int, default=10, help="seconds of load (default 10)")
    parser.add_argument("--top", type=int, default=25, help="functions listed per process")
    parser.add_argument("--native", action="store_true", help="include C frames (syscalls, uvloop)")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="CPU shares only")
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR)
    parser.add_argument(
        "--gateway-args", default="", help="extra options for our gateway, e.g. '--pipeline 0' (one string)"
    )
    parser.add_argument(
        "--attack",
        metavar="SLOW_MODE",
        help="meanwhile, a make bench-slow mode (direct-headers, fcgi-params, ...) from its own process",
    )
    parser.add_argument("--attack-connections", type=int, default=1000, help="its slow connections (readers: 200)")
    args = parser.parse_args(argv)
    try:
        (spec,) = select_servers([args.server])
        (scenario,) = select_scenarios([args.scenario])
        if spec.backend != "ours" and args.profile:
            raise BenchError("py-spy samples our gateway's processes only; add --no-profile for a peer's numbers")
        ensure_nginx()
        wrk = ensure_wrk()
        py_spy = _py_spy() if args.profile else ""
        peers = ensure_peers([spec.package]) if spec.package else Peers()
        return _run(args, spec, scenario, wrk, py_spy, peers)
    except BenchError as err:
        print(f"benchmarks.profile: {err}", file=sys.stderr)
        return 2


def _start_attack(stack: Stack, spec: ServerSpec, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """``--attack``: the slow mode as ``make bench-slow`` aims it, from a process of its own, given the time to
    open its connections and trickle once before the load starts."""
    from benchmarks.slow import MODES, counts_for, slow_config  # noqa: PLC0415 - keeps --help fast

    mode = MODES.get(args.attack)
    if mode is None:
        raise BenchError(f"unknown slow mode {args.attack}; known: {', '.join(MODES)}")
    (count,) = counts_for(mode.name, [args.attack_connections])
    config = slow_config(stack, spec, mode, count, lasting=3 + args.duration + 60)
    command = [sys.executable, "-m", "benchmarks.slowloris", *slowloris.command_line(config), "--quiet"]
    attacker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log(f"attack: {count} x {mode.name} ({mode.mode}) at port {config.port}, ramp {config.ramp:g} s")
    time.sleep(config.ramp + 3)
    return attacker


def _run(args: argparse.Namespace, spec, scenario, wrk: str, py_spy: str, peers: Peers) -> int:  # type: ignore[no-untyped-def]
    from benchmarks.harness import running_stack  # noqa: PLC0415 - keeps --help fast

    scratch = fresh_scratch(args.work_dir, "profile")
    extra = shlex.split(args.gateway_args)
    with running_stack(scratch, [spec], args.workers, peers, ours_args=extra) as stack:
        master = stack.backend_for(spec).pid
        assert master is not None
        workers = [pid for pid in tree_pids(master) if pid != master]
        url = stack.url(spec, scenario.path)
        attacker = _start_attack(stack, spec, args) if args.attack else None
        log(f"profiling {spec.name} / {scenario.name}: master {master}, workers {workers}, {args.duration} s")
        before = {pid: _ticks(pid) for pid in [master, *workers]}
        switches_before = {pid: _switches(pid) for pid in before}
        faults_before = {pid: _faults(pid) for pid in before}
        machine_before = machine_seconds()
        everyone_before = _ticks_by_command()
        recorders: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        if py_spy:
            # The first and last second of a wrk run are ramps: sample the steady middle only.
            seconds = max(args.duration - 2, 1)

            def start_recorders() -> None:
                time.sleep(1)
                for role, pid in (("master", master), ("worker", workers[0])):
                    output = scratch / f"{role}.collapsed"
                    recorders.append((role, _record(py_spy, pid, seconds, output, args.native), output))

            starter = threading.Thread(target=start_recorders)
            starter.start()
        started = time.monotonic()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = run_wrk(wrk, url, connections=args.concurrency, duration=args.duration,
                         body_bytes=scenario.body_bytes)  # fmt: skip
        elapsed = time.monotonic() - started
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (
            children_before.ru_utime + children_before.ru_stime
        )
        after = {pid: _ticks(pid) for pid in before}
        machine_after = machine_seconds()
        everyone_after = _ticks_by_command()
        switches = {pid: _switches(pid) - count for pid, count in switches_before.items()}
        faults = {pid: _faults(pid) - count for pid, count in faults_before.items()}
        if py_spy:
            starter.join()
            for _, recorder, _ in recorders:
                recorder.wait(timeout=60)
        if attacker is not None:
            attacker.terminate()
            attacker.wait(timeout=60)
    print(f"{spec.name} / {scenario.name}: {result.rps:.0f} req/s, p50 {result.p50_ms:.2f} ms, "
          f"p99 {result.p99_ms:.2f} ms, errors {result.error_count}")  # fmt: skip
    busy = machine_after[0] - machine_before[0]
    total = max(machine_after[1] - machine_before[1], 1e-9)
    by_command: collections.Counter[str] = collections.Counter()
    for pid, (name, ticks) in everyone_after.items():
        by_command[name] += ticks - everyone_before.get(pid, (name, 0))[1]
    shares = ", ".join(
        f"{name} {ticks / _CLOCK_TICKS / elapsed:.0%}" for name, ticks in by_command.most_common(4) if ticks > 0
    )
    print(f"  machine: {busy / total:.0%} of its {os.cpu_count()} cores busy; in cores: {shares}, "
          f"wrk {wrk_cpu / elapsed:.0%}")  # fmt: skip
    for pid, (user, system) in before.items():
        user_share = (after[pid][0] - user) / _CLOCK_TICKS / elapsed
        system_share = (after[pid][1] - system) / _CLOCK_TICKS / elapsed
        share = user_share + system_share
        requests = max(result.rps * elapsed, 1)
        role = "master" if pid == master else "child"
        print(f"  CPU {role} {pid}: {share:.0%} of one core (user {user_share:.0%}, kernel {system_share:.0%}), "
              f"{switches[pid] / requests:.2f} context switches and {faults[pid] / requests:.1f} page faults "
              "per request")  # fmt: skip
    for role, recorder, output in recorders:
        print(f"{role}:")
        if output.exists():
            print("\n".join(summarize(output, args.top)))
        else:
            stderr = recorder.stderr.read().decode(errors="replace") if recorder.stderr else ""
            print(f"  py-spy failed: {stderr.strip()[-300:]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
