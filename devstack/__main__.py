"""``python -m devstack`` (``make run``): the demo app behind a private nginx."""

from devstack.stack import main

raise SystemExit(main())
