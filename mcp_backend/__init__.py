"""kube-mcp-gateway's MCP backend: Kubernetes tools over Streamable HTTP with token passthrough.

Every request's bearer token goes to the chosen API server unchanged (or exchanged for a
foreign-domain cluster), so the cluster's authentication and RBAC decide. See ``cli`` for
options, ``app.create_app`` for the ASGI app.
"""

from __future__ import annotations

__version__ = "0.1.0"
