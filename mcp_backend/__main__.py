"""``python -m mcp_backend`` = ``mcp-backend``."""

from __future__ import annotations

import sys

from mcp_backend.cli import main

sys.exit(main())
