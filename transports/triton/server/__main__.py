"""``python -m transports.triton.server``: the proxy (as ``-m transports.triton.proxy``)."""

import sys

from transports.triton.server.cli import main

sys.exit(main())
