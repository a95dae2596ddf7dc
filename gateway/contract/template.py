"""The control socket between the master and a ``--preload`` template process: its messages, typed on both sides.

A template imports the app once and forks the workers; the master never forks (it runs the event loop) and never
imports the app. The socket is a ``SOCK_SEQPACKET`` pair, so each message is one datagram: a small JSON object,
with descriptors passed alongside it (``SCM_RIGHTS``) where the message says so.

- template → master ``{"ready": PID}``: the app imported; the template waits for FORK messages.
  (A template that cannot import the app exits with ``EXIT_APP_LOAD`` instead, as a worker does.)
- master → template ``{"fork": ID}`` with two descriptors, the worker's end of its channel and of its files
  socket: the template forks a child that closes everything of the template's and serves on that channel.
- template → master ``{"forked": ID, "pid": PID}`` with one descriptor, the child's pidfd (opened by the
  template, the child's parent, before it can be reaped, so it can never name a reused pid): the master watches it
  for the child's exit and signals the child through it.
- template → master ``{"exited": PID, "status": STATUS}``: a child was reaped; STATUS as
  ``asyncio.subprocess.Process.returncode`` (negative: killed by that signal).

When the master closes its end the template forks no more, waits for its children and exits.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

#: Large enough for any message; every one is a few dozen bytes.
MESSAGE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Ready:
    pid: int


@dataclass(frozen=True, slots=True)
class Fork:
    worker: int  # the master's number for the worker it asks for (its answer names it)


@dataclass(frozen=True, slots=True)
class Forked:
    worker: int
    pid: int


@dataclass(frozen=True, slots=True)
class Exited:
    pid: int
    status: int


Message = Ready | Fork | Forked | Exited


class ControlError(ValueError):
    """A control message that is not one of the four: a bug on one side, never the app's doing."""


def encode(message: Message) -> bytes:
    match message:
        case Ready(pid):
            return orjson.dumps({"ready": pid})
        case Fork(worker):
            return orjson.dumps({"fork": worker})
        case Forked(worker, pid):
            return orjson.dumps({"forked": worker, "pid": pid})
        case Exited(pid, status):
            return orjson.dumps({"exited": pid, "status": status})


def decode(data: bytes) -> Message:
    try:
        fields = orjson.loads(data)
        if "ready" in fields:
            return Ready(int(fields["ready"]))
        if "fork" in fields:
            return Fork(int(fields["fork"]))
        if "forked" in fields:
            return Forked(int(fields["forked"]), int(fields["pid"]))
        if "exited" in fields:
            return Exited(int(fields["exited"]), int(fields["status"]))
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError) as err:
        raise ControlError(f"malformed control message {data[:100]!r}: {err}") from None
    raise ControlError(f"unknown control message {data[:100]!r}")
