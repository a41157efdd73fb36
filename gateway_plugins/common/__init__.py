"""Scaffolding shared by the gateway plugin services (token exchange, policy); settings, logging,
redaction and bearer parsing shared with the backend live in :mod:`kmg_common`.

- :mod:`.service`: the base app (health, readiness, metrics routes) and serving until a signal.
- :mod:`.middlewares`: request id, HTTP metrics, tracing span, JSON errors, Host/Origin checks.
- :mod:`.caller_auth`: who may ask the checks (the gateway's shared secret or mTLS certificate).
- :mod:`.http_client`: the one shared, TLS-aware aiohttp client session per upstream.
- :mod:`.jwks`: per-issuer JWKS cache with OIDC discovery and rate-limited refetch.
- :mod:`.jwt_validation`: local JWT validation that fails closed with token-free reasons.
"""
