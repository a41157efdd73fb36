"""``python -m gateway_plugins.token_exchange`` = ``mcp-token-exchange``."""

import sys

from gateway_plugins.token_exchange.cli import main

sys.exit(main())
