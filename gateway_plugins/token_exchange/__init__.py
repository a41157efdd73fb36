"""Token exchange service: the gateway's auth layer (Envoy ext_authz) and the backend (RFC 8693
facade) get a token meant for their target, exchanged at Keycloak only on a cache miss.

Library entry point: :class:`~gateway_plugins.token_exchange.exchanger.Exchanger`
(``await exchanger.token_for(subject_token, target)``); HTTP shell:
:func:`~gateway_plugins.token_exchange.app.create_app` (the assembly; :mod:`.service` is what the
handlers use, :mod:`.routes` the routes, :mod:`.pipeline` the one check pipeline).
"""
