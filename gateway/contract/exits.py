"""Exit statuses: a process monitor (systemd, supervisord) and the master both read them.

One number means one thing in every process of the tree: 3 is "the application cannot be loaded", whether the
gateway reports it at start-up or a worker does to the master (which then stops instead of respawning in a storm,
as gunicorn's ``APP_LOAD_ERROR`` does).
"""

from __future__ import annotations

#: A normal stop (SIGTERM, SIGINT, SIGQUIT).
EXIT_OK = 0
#: A bad option or configuration: nothing was started.
EXIT_CONFIG = 2
#: The application cannot be imported (gateway at start-up, or a worker to the master).
EXIT_APP_LOAD = 3
#: Every worker died and none can be started again: the gateway gives up rather than serve 502s.
EXIT_WORKERS_GONE = 4
