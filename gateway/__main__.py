"""``python -m gateway``: the command line entry point."""

from gateway.cli import main

raise SystemExit(main())
