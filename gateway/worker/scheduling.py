"""The workers' CPU scheduling policy: they yield to the event loop, which must stay responsive.

A worker wakes up each time the loop hands it a request. Under Linux's default policy a task that wakes up may
preempt the one running on that CPU, and on a busy machine that is usually the loop, caught in the middle of a
batch of events (other clients, other workers' responses): the loop stalls while the worker runs
(``nonvoluntary_ctxt_switches`` in /proc/PID/status shows it). ``SCHED_BATCH`` marks the workers as throughput
work: same priority and time share, but their wake-ups never preempt. What it is worth, measured with
``python -m benchmarks.profile``, is in benchmarks/RESULTS.md (History).

Needs no privilege (any process may move itself from SCHED_OTHER to SCHED_BATCH). ``--worker-scheduling
normal`` keeps the default policy; elsewhere than Linux nothing changes.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def use_batch_scheduling() -> bool:
    """Move this process to SCHED_BATCH; False where the platform has no such policy or refuses it."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as err:  # a container's seccomp profile may deny it; the default policy still works
        log.warning("could not switch to SCHED_BATCH (%s); the worker keeps the default CPU scheduling", err)
        return False
    return True
