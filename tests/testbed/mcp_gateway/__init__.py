"""The local MCP gateway for the testbed, ``make demo`` and the e2e tests: a real Envoy with the
REAL MCP Gateway broker/router (``github.com/Kuadrant/mcp-gateway`` v0.9.0, built by
``make testbed``) in front of our services.

* :mod:`.envoy_config`: Envoy's configuration as upstream wires it (the router as ext_proc first,
  then the auth layer, routes to the broker and to each server by ``:authority``), assembled as
  data; the auth layer is our token exchange and policy (ext_authz) or Authorino.
* :mod:`.broker_router`: the ``mcp-broker-router`` process without Kubernetes (servers config
  file, signing keys, flags).
* :mod:`.stack`: starts everything (two backends serving clusters A and B with tool prefixes
  ``a_`` / ``b_``, token exchange, policy, the broker/router, Envoy); :mod:`.authorino_stack`:
  the same behind the real Authorino; :mod:`.seed`: the demo content of the clusters.

See ``README.md`` in this folder for the request path and what of the real gateway is exercised.
"""
