"""How the master starts a worker process: ``python -m gateway.worker FD SETTINGS FILES_FD``, or a --preload
template that imports the app once and forks the workers: ``python -m gateway.worker template CONTROL_FD
SETTINGS``."""

import sys

if sys.argv[1:2] == ["template"]:
    from gateway.worker.template import main as template_main

    raise SystemExit(template_main(sys.argv[2:]))

from gateway.worker.process import main

raise SystemExit(main(sys.argv[1:]))
