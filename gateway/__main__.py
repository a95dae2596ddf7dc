"""``python -m gateway``: the command line entry point."""

from gateway.config.cli import main

raise SystemExit(main())
