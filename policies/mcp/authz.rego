# METADATA
# title: MCP tool authorization
# description: |
#   Decides which MCP tools a user may call and which tools they see in tools/list.
#   The base rule (the MCP Gateway demo): a tool is allowed when its name is one of the user's
#   client roles of the MCP server's Keycloak client, i.e. in resource_access[<server>].roles,
#   spelled plain (pods_list) or prefixed (tool:pods_list). Everything else is switched on by
#   data under data.mcp.config (defaults in policies/data/*.json): a role granting every
#   read-only tool, group grants, namespace rules on tool arguments, and a deny list that wins
#   over any grant.
#
#   Prompts follow the same shape: a prompt is allowed when the user holds the client role
#   prompt:<name> (data.mcp.config.prompt_role_prefixes) of the server, or a group grant names
#   prompt:<name>; the deny list denies prompts its entries name under "prompts".
#
#   Input (built by gateway_plugins.policy.input):
#     method     JSON-RPC method ("tools/call", "prompts/get", "tools/list", "initialize", ...)
#     server     the MCP server, x-mcp-servername ("namespace/name")
#     tool       {"name": "pods_list", "annotations": {"readOnly": true, ...}}
#     prompt     {"name": "cluster-health-check"} (prompts/get only)
#     arguments  the tools/call arguments the policy reads, projected by the service
#                (gateway_plugins.policy.input.POLICY_ARGUMENTS): namespace (string) and
#                all_namespaces (boolean) only; never access_token, manifests or other values.
#                Absent when the request body was not available. A rule reading another
#                argument must add it to POLICY_ARGUMENTS first.
#     claims     the verified token claims the policy reads (POLICY_CLAIMS: iss, sub,
#                preferred_username, resource_access, realm_access, groups, azp)
#     subject    {"name": display name for reasons}
#     catalogue  optional, for tools/list: {server: [{"name": ..., "annotations": {...}}]};
#                else data.mcp.catalogue; else the user's roles of clients named like servers.
#
#   Portability: the same module runs in OPA and in the embedded engine (rego-cpp). Constructs
#   that engine evaluates differently are avoided: function calls in comprehension heads,
#   constants in function heads, indexing the result of sort(), and strings made by builtins
#   (concat, lower) or taken from object.get defaults inside sprintf. The differential test
#   (tests/gateway_plugins/policy/test_differential.py) catches any new divergence.
package mcp.authz

# --- settings (data.mcp.config, each with a default) -----------------------------------------

default _configured := {}

_configured := data.mcp.config

_role_prefixes := object.get(_configured, "role_prefixes", ["", "tool:"])

_prompt_role_prefixes := object.get(_configured, "prompt_role_prefixes", ["prompt:"])

default _read_only_role := "read-only"

_read_only_role := _configured.read_only_role if is_string(_configured.read_only_role)

_group_grant_config := object.get(_configured, "group_grants", {})

_deny_list := object.get(_configured, "deny_list", [])

_namespace_rule_config := object.get(_configured, "namespace_rules", [])

default _broker := "mcpBroker"

_broker := _configured.broker_server_name if is_string(_configured.broker_server_name)

# --- the request -------------------------------------------------------------------------------

_claims := object.get(input, "claims", {})

_server := object.get(input, "server", "")

_tool_name := object.get(input, ["tool", "name"], "")

_prompt_name := object.get(input, ["prompt", "name"], "")

_annotations := object.get(input, ["tool", "annotations"], {})

_username := input.subject.name if is_string(input.subject.name)

else := _name_of(_claims)

default _method := "(none)"

_method := input.method if is_string(input.method)

# METADATA
# title: Decision for one request
# description: |
#   {"allow": bool, "reason": string}. tools/call (and any other method that names a backend
#   tool) is decided per tool, prompts/get per prompt; methods that name neither are allowed, and
#   so is the session setup (initialize, notifications/initialized) the MCP Gateway's router sends
#   a server on behalf of a call: it calls no tool, and the call that follows is decided on its
#   own. Order: a malformed request denies; then the deny list and namespace rules deny; then the
#   first grant allows (a role naming the tool, the read-only role, a group grant); else deny.
# entrypoint: true
decision := _tool_decision if {
	input.method == "tools/call"
} else := _prompt_decision if {
	input.method == "prompts/get"
} else := _tool_decision if {
	_names_backend_tool
	not _session_setup
} else := {"allow": true, "reason": _no_tool_reason}

# The router's hairpin initialize carries the call's x-mcp-toolname. Deciding it like the call
# would make a denial the router's own opaque "failed to create session" error (403 text), which
# hides the policy's reason from the client; the call itself is denied with its reason instead.
_session_setup if input.method == "initialize"

_session_setup if input.method == "notifications/initialized"

_no_tool_reason := sprintf("method %s names no tool: no tool decision needed", [_method])

# --- prompts/get -------------------------------------------------------------------------------

_prompt_decision := {"allow": false, "reason": _first(_prompt_request_errors)} if {
	count(_prompt_request_errors) > 0
} else := {"allow": false, "reason": _first(_prompt_denials)} if {
	count(_prompt_denials) > 0
} else := {"allow": true, "reason": _first(reasons)} if {
	reasons := _prompt_grants(_claims, _server, _prompt_name)
	count(reasons) > 0
} else := {"allow": false, "reason": _prompt_not_granted}

_prompt_not_granted := sprintf("%s holds no role of %s that grants prompt %s", [_username, _server, _prompt_name])

_prompt_request_errors contains "the request names no MCP server (x-mcp-servername is missing)" if {
	not _valid_name(_server)
}

_prompt_request_errors contains "the request names no prompt (x-mcp-promptname is missing)" if {
	not _valid_name(_prompt_name)
}

_prompt_denials := {reason |
	some entry in _deny_entries(_claims, _server)
	_matches_any(object.get(entry, "prompts", []), _prompt_name)
	reason := sprintf("prompt %s of %s is on the deny list: %s", [_prompt_name, _server, _deny_reason(entry)])
}

# Every reason the claims grant the prompt: a role prompt:<name>, or a group grant naming it.
_prompt_grants(claims, server, prompt) := _prompt_role_grants(claims, server, prompt) | _prompt_group_grants(claims, server, prompt)

_prompt_role_grants(claims, server, prompt) := {reason |
	some role in _client_roles(claims, server)
	_prompt_role_names(role, prompt)
	reason := sprintf("%s holds role %s of %s", [_name_of(claims), role, server])
}

_prompt_role_names(role, prompt) if {
	some prefix in _prompt_role_prefixes
	startswith(role, prefix)
	trim_prefix(role, prefix) == prompt
}

_prompt_group_grants(claims, server, prompt) := {reason |
	some group in _granting_groups(claims)
	some pattern in object.keys(_group_grant_config[group])
	_matches(pattern, server)
	some spec in _group_grant_config[group][pattern]
	_prompt_role_names(spec, prompt)
	reason := sprintf("group %s grants %s on %s", [group, spec, server])
}

_names_backend_tool if {
	_tool_name != ""
	_server != _broker
}

_tool_decision := {"allow": false, "reason": _first(_request_errors)} if {
	count(_request_errors) > 0
} else := {"allow": false, "reason": _first(_denials)} if {
	count(_denials) > 0
} else := {"allow": true, "reason": reason} if {
	reason := _first_grant(_claims, _server, _tool_name, _annotations)
} else := {"allow": false, "reason": _not_granted}

_not_granted := sprintf("%s holds no role of %s that grants tool %s", [_username, _server, _tool_name])

_request_errors contains "the request names no MCP server (x-mcp-servername is missing)" if {
	not _valid_name(_server)
}

_request_errors contains "the request names no tool (x-mcp-toolname is missing)" if {
	not _valid_name(_tool_name)
}

_valid_name(name) if {
	is_string(name)
	name != ""
}

_denials := listed_denials(_claims, _server, _tool_name) | _argument_denials

# The first grant in order of precedence: a role naming the tool, then the read-only role, then
# a group grant. Evaluated lazily: most calls stop at the first.
_first_grant(claims, server, tool, annotations) := _first(reasons) if {
	reasons := _role_grants(claims, server, tool)
	count(reasons) > 0
} else := _first(reasons) if {
	reasons := _read_only_grants(claims, server, tool, annotations)
	count(reasons) > 0
} else := _first(reasons) if {
	reasons := _group_grants(claims, server, tool, annotations)
	count(reasons) > 0
}

# First reason in a stable order, so that both engines give the same text.
# (min, not sort(...)[0]: the embedded engine cannot index what sort returns for a set.)
_first(reasons) := min(reasons)

# --- grants ------------------------------------------------------------------------------------

# METADATA
# title: Grants
# description: Every reason the claims grant the tool on the server; empty when nothing does.
grants(claims, server, tool, annotations) := union({
	_role_grants(claims, server, tool),
	_read_only_grants(claims, server, tool, annotations),
	_group_grants(claims, server, tool, annotations),
})

_client_roles(claims, server) := {role | some role in object.get(claims, ["resource_access", server, "roles"], [])}

# Comprehension heads stay plain variables (see Portability above).
_role_grants(claims, server, tool) := {reason |
	some role in _client_roles(claims, server)
	_role_names(role, tool)
	reason := sprintf("%s holds role %s of %s", [_name_of(claims), role, server])
}

_role_names(role, tool) if {
	some prefix in _role_prefixes
	startswith(role, prefix)
	trim_prefix(role, prefix) == tool
}

_read_only_grants(claims, server, tool, annotations) := {reason |
	_is_read_only(annotations)
	_read_only_role in _client_roles(claims, server)
	reason := sprintf("%s holds role %s of %s and %s is read-only", [_name_of(claims), _read_only_role, server, tool])
}

_group_grants(claims, server, tool, annotations) := {reason |
	some group in _granting_groups(claims)
	some pattern in object.keys(_group_grant_config[group])
	_matches(pattern, server)
	some spec in _group_grant_config[group][pattern]
	_spec_grants(spec, tool, annotations)
	reason := sprintf("group %s grants %s on %s", [group, spec, server])
}

# The configured groups (spelled as configured) the claims are a member of.
_granting_groups(claims) := {group |
	some group in object.keys(_group_grant_config)
	_member_of(claims, group)
}

_spec_grants(spec, _, _) if spec == "*"

_spec_grants(spec, tool, _) if spec == tool

_spec_grants(spec, _, annotations) if {
	spec == "@read-only"
	_is_read_only(annotations)
}

_is_read_only(annotations) if annotations.readOnly == true

# Keycloak's group mapper emits "/team" (full path) or "team": compare without the slash.
_member_of(claims, group) if {
	some name in object.get(claims, "groups", [])
	trim_prefix(name, "/") == trim_prefix(group, "/")
}

# String defaults come from else branches, not object.get: the embedded engine quotes an
# object.get default string when it passes through sprintf.
_name_of(claims) := claims.preferred_username if {
	is_string(claims.preferred_username)
} else := claims.sub if {
	is_string(claims.sub)
} else := "unknown user"

_deny_reason(entry) := entry.reason if is_string(entry.reason)

else := "denied"

_rule_reason(rule) := rule.reason if is_string(rule.reason)

else := "namespace rule"

_matches(pattern, _) if pattern == "*"

_matches(pattern, value) if pattern == value

_matches_any(patterns, value) if {
	some pattern in patterns
	_matches(pattern, value)
}

# --- deny list ---------------------------------------------------------------------------------

# METADATA
# title: Deny list
# description: Reasons the deny list refuses the tool to these claims; wins over every grant.
listed_denials(claims, server, tool) := {reason |
	some entry in _deny_entries(claims, server)
	_matches_any(object.get(entry, "tools", ["*"]), tool)
	reason := sprintf("%s of %s is on the deny list: %s", [tool, server, _deny_reason(entry)])
}

# The deny list entries that apply to these claims on this server.
_deny_entries(claims, server) := [entry |
	some entry in _deny_list
	_matches_any(object.get(entry, "servers", ["*"]), server)
	_applies_to(entry, claims)
]

# An entry without users and groups applies to everybody.
_applies_to(entry, _) if {
	not entry.users
	not entry.groups
}

_applies_to(entry, claims) if _name_of(claims) in entry.users

_applies_to(entry, claims) if {
	some group in entry.groups
	_member_of(claims, group)
}

# --- namespace rules on arguments --------------------------------------------------------------

# Namespace rules look at tools/call arguments only: other methods naming a tool carry no
# arguments, and the call itself is checked when it comes.
_namespace_rules := [rule |
	input.method == "tools/call"
	some rule in _namespace_rule_config
	_matches_any(object.get(rule, "servers", ["*"]), _server)
	_matches_any(object.get(rule, "tools", ["*"]), _tool_name)
]

_argument_denials contains reason if {
	some rule in _namespace_rules
	not _has_arguments
	object.get(rule, "when_arguments_missing", "deny") != "allow"
	reason := sprintf(
		"%s is restricted by namespace (%s) but the request body was not available to check its arguments",
		[_tool_name, _rule_reason(rule)],
	)
}

_argument_denials contains reason if {
	some rule in _namespace_rules
	_namespace in object.get(rule, "denied_namespaces", [])
	reason := sprintf(
		"%s may not run in namespace %s: %s",
		[_tool_name, _namespace, _rule_reason(rule)],
	)
}

_argument_denials contains reason if {
	some rule in _namespace_rules
	allowed := rule.allowed_namespaces
	_has_arguments
	not _namespace in allowed
	reason := sprintf(
		"%s may not run in %s, which is not among its allowed namespaces: %s",
		[_tool_name, _namespace_label, _rule_reason(rule)],
	)
}

_argument_denials contains reason if {
	some rule in _namespace_rules
	_all_namespaces
	count(object.get(rule, "denied_namespaces", [])) + count(object.get(rule, "allowed_namespaces", [])) > 0
	reason := sprintf(
		"%s may not span all namespaces: %s",
		[_tool_name, _rule_reason(rule)],
	)
}

_has_arguments if is_object(input.arguments)

default _namespace := ""

_namespace := input.arguments.namespace if is_string(input.arguments.namespace)

_namespace_label := sprintf("namespace %s", [_namespace]) if _namespace != ""

else := "the default namespace"

_all_namespaces if input.arguments.all_namespaces == true

# --- tools/list --------------------------------------------------------------------------------

# METADATA
# title: Tools each server allows this user (tools/list)
# description: |
#   {server: [tool, ...]}: names sorted, [] when none. The same grants and deny list as
#   decision, computed set-wise so that hundreds of tools stay cheap. Namespace rules do not
#   hide a tool: they restrict its arguments at call time.
# entrypoint: true
allowed_tools := {server: names |
	some server in object.keys(_catalogue)
	names := _allowed_on(server, _catalogue[server])
}

_catalogue := input.catalogue if {
	is_object(input.catalogue)
} else := data.mcp.catalogue if {
	is_object(data.mcp.catalogue)
} else := {server: tools |
	some server in object.keys(object.get(_claims, "resource_access", {}))
	contains(server, "/")
	tools := _tools_from_roles(object.get(_claims.resource_access[server], "roles", []))
}

# Without a catalogue a server's tools are its role names, each spelling stripped of its prefix.
_tools_from_roles(roles) := [tool |
	some role in roles
	role != _read_only_role
	not _is_prompt_role(role)
	some prefix in _role_prefixes
	startswith(role, prefix)
	name := trim_prefix(role, prefix)
	not _prefixed(name)
	tool := {"name": name}
]

_is_prompt_role(role) if {
	some prefix in _prompt_role_prefixes
	startswith(role, prefix)
}

_prefixed(name) if {
	some prefix in _role_prefixes
	prefix != ""
	startswith(name, prefix)
}

_allowed_on(server, tools) := sort((_granted_names(server, names, read_only) & names) - _denied_names(server, names)) if {
	names := {name | some tool in tools; name := tool.name}
	read_only := {name | some tool in tools; _is_read_only(object.get(tool, "annotations", {})); name := tool.name}
}

_granted_names(server, names, read_only) := union({
	_role_tool_names(server),
	_read_only_role_names(server, read_only),
	_group_granted_names(server, names, read_only),
})

_role_tool_names(server) := {tool |
	some role in _client_roles(_claims, server)
	some prefix in _role_prefixes
	startswith(role, prefix)
	tool := trim_prefix(role, prefix)
}

_read_only_role_names(server, read_only) := read_only if {
	_read_only_role in _client_roles(_claims, server)
} else := set()

_group_granted_names(server, names, read_only) := union({granted |
	some group in _granting_groups(_claims)
	some pattern in object.keys(_group_grant_config[group])
	_matches(pattern, server)
	some spec in _group_grant_config[group][pattern]
	granted := _spec_names(spec, names, read_only)
})

_spec_names(spec, names, read_only) := names if {
	spec == "*"
} else := read_only if {
	spec == "@read-only"
} else := {spec}

_denied_names(server, names) := union({denied |
	some entry in _deny_entries(_claims, server)
	denied := _entry_names(object.get(entry, "tools", ["*"]), names)
})

_entry_names(patterns, names) := names if {
	"*" in patterns
} else := {name | some name in patterns}

# METADATA
# title: Building blocks of allowed_tools, per server
# description: |
#   {server: {"roles": [...], "role_prefixes": [...], "named": [...], "read_only": bool,
#   "all": bool, "deny_all": bool, "denied": [...]}} over the catalogue's servers.
#   allowed_tools equals, per server: ((role names stripped of a matching prefix + named) &
#   tools) + (read-only tools if read_only) + (tools if all), minus denied; nothing when
#   deny_all. The embedded engine evaluates this (no per-tool work) and does the set algebra
#   natively: rego-cpp is slow on sets of hundreds of tools. The tests check both forms agree.
# entrypoint: true
allowed_tools_parts := {server: parts |
	some server in object.keys(_catalogue)
	parts := _parts(server)
}

# Raw roles and the accepted prefixes, not the stripped names: per-role work is what rego-cpp
# is slow at, and the stripping is plain string algebra.
_parts(server) := {
	"roles": roles,
	"role_prefixes": _role_prefixes,
	"named": [spec | some spec in specs; spec != "*"; spec != "@read-only"],
	"read_only": _any_true({"@read-only" in specs, _read_only_role in roles}),
	"all": "*" in specs,
	"deny_all": "*" in denied,
	"denied": [name | some name in denied; name != "*"],
} if {
	roles := object.get(_claims, ["resource_access", server, "roles"], [])
	specs := _group_specs(server)
	denied := _denied_patterns(server)
}

_any_true(flags) if true in flags

else := false

_group_specs(server) := {spec |
	some group in _granting_groups(_claims)
	some pattern in object.keys(_group_grant_config[group])
	_matches(pattern, server)
	some spec in _group_grant_config[group][pattern]
}

_denied_patterns(server) := {pattern |
	some entry in _deny_entries(_claims, server)
	some pattern in object.get(entry, "tools", ["*"])
}

# --- prompts/list ------------------------------------------------------------------------------

# METADATA
# title: Prompts each server allows this user (prompts/list, the signed header's "prompts")
# description: |
#   {server: [prompt, ...]}: names sorted, [] when none, over the same servers as
#   allowed_tools. Names come from the grants (roles prompt:<name>, group grants naming
#   prompt:<name>); the broker lists only prompts its servers really offer.
# entrypoint: true
allowed_prompts := {server: names |
	some server in object.keys(_catalogue)
	names := _allowed_prompts_on(server)
}

_allowed_prompts_on(server) := [] if {
	"*" in _denied_prompt_patterns(server)
} else := sort(_granted_prompt_names(server) - _denied_prompt_patterns(server))

_granted_prompt_names(server) := _role_prompt_names(server) | _group_prompt_names(server)

_role_prompt_names(server) := {name |
	some role in _client_roles(_claims, server)
	some prefix in _prompt_role_prefixes
	startswith(role, prefix)
	name := trim_prefix(role, prefix)
}

_group_prompt_names(server) := {name |
	some spec in _group_specs(server)
	some prefix in _prompt_role_prefixes
	startswith(spec, prefix)
	name := trim_prefix(spec, prefix)
}

_denied_prompt_patterns(server) := {pattern |
	some entry in _deny_entries(_claims, server)
	some pattern in object.get(entry, "prompts", [])
}
