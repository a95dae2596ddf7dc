"""``python -m gateway.worker FD SETTINGS``: how the master starts a worker process."""

import sys

from gateway.worker.process import main

raise SystemExit(main(sys.argv[1:]))
