"""Tool policies for the MCP Gateway: Keycloak client roles → Rego decisions.

The service answers the gateway's ext_authz checks (``tools/call``: allow or deny with a reason;
``tools/list``: a signed per-user tool list for the broker) and JSON APIs, with the policy of
``policies/mcp/authz.rego`` evaluated in-process (rego-cpp) or by an OPA server. ``mcp-policy
sync-roles`` keeps one Keycloak client role per backend tool.

Modules: :mod:`.config` (settings), :mod:`.input` (Rego input), :mod:`.engines` (the engine
interface; :mod:`.embedded_engine`, :mod:`.opa_engine`), :mod:`.wristband` (signed header),
:mod:`.decision_log`, :mod:`.sync_roles` (with :mod:`.role_plan` and :mod:`.keycloak_admin`),
:mod:`.app` (HTTP; :mod:`.service`, :mod:`.pipeline`, :mod:`.routes`), :mod:`.cli`
(``mcp-policy``). The package README lists every module.
"""

from gateway_plugins.policy.engines import Decision, EngineUnavailable, PolicyError

__all__ = ["Decision", "EngineUnavailable", "PolicyError"]
