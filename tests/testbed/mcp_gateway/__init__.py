"""The local MCP gateway for the testbed, ``make demo`` and the e2e tests: a real Envoy with the
REAL MCP Gateway broker/router (``github.com/Kuadrant/mcp-gateway`` v0.9.0, built by
``make testbed``) in front of our services.

* :mod:`.envoy_config`: Envoy's configuration as upstream wires it (the router as ext_proc first,
  then the auth layer, routes to the broker and to each server by ``:authority``), assembled as
  data from :mod:`.envoy_filters` (the filters before the auth layer; the strip Lua is the data
  file ``strip_client_headers.lua``), :mod:`.envoy_auth` (the auth layer: our token exchange and
  policy as ext_authz, or Authorino) and :mod:`.envoy_clusters`.
* :mod:`.broker_router`: the ``mcp-broker-router`` process without Kubernetes (servers config
  file, signing keys, flags).
* :mod:`.stack`: the running stack (:class:`~.stack.LocalGateway`: two backends serving clusters
  A and B with tool prefixes ``a_`` / ``b_``, token exchange, policy, the broker/router, Envoy);
  :mod:`.start` starts it, in the stages of :mod:`.launch`, with the services' settings of
  :mod:`.service_configs`; :mod:`.authorino_stack`: the same behind the real Authorino;
  :mod:`.seed`: the demo content of the clusters.

See ``README.md`` in this folder for the request path and what of the real gateway is exercised.
"""
