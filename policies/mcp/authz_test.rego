# METADATA
# title: Unit tests of mcp.authz
# description: One test per rule and per data switch; run with `opa test policies/ --coverage`.
package mcp.authz_test

import data.mcp.authz

_server := "mcp-test/kubernetes-mcp"

_other := "team-a/other-mcp"

_ro := {"readOnly": true, "destructive": false}

_rw := {"readOnly": false, "destructive": true}

_claims(roles) := {
	"preferred_username": "mcp",
	"sub": "0a1b",
	"resource_access": {_server: {"roles": roles}, "account": {"roles": ["manage-account"]}},
}

_call(tool, annotations, claims) := {
	"method": "tools/call",
	"server": _server,
	"tool": {"name": tool, "annotations": annotations},
	"claims": claims,
}

_config := {
	"deny_list": [
		{"tools": ["pods_delete"], "reason": "deletes go through change control"},
		{"servers": [_other], "tools": ["*"], "users": ["intern"], "reason": "interns stay off team-a"},
		{"tools": ["*"], "groups": ["/mcp-suspended"], "reason": "suspended"},
	],
	"namespace_rules": [
		{"tools": ["pods_exec"], "denied_namespaces": ["kube-system"], "reason": "no shell in system pods"},
		{"tools": ["helm_install"], "allowed_namespaces": ["apps", "staging"], "reason": "apps only"},
		{"tools": ["pods_log"], "denied_namespaces": ["vault"], "when_arguments_missing": "allow", "reason": "secrets"},
	],
	"group_grants": {
		"mcp-viewers": {"*": ["@read-only"]},
		"/sre": {_server: ["*"]},
		"helm-users": {_server: ["helm_list"]},
	},
}

# --- base rule: client roles -------------------------------------------------------------

test_plain_role_allows if {
	d := authz.decision with input as _call("pods_list", _ro, _claims(["pods_list"]))
	d.allow == true
	d.reason == "mcp holds role pods_list of mcp-test/kubernetes-mcp"
}

test_prefixed_role_allows if {
	d := authz.decision with input as _call("pods_list", _ro, _claims(["tool:pods_list"]))
	d.allow == true
	d.reason == "mcp holds role tool:pods_list of mcp-test/kubernetes-mcp"
}

test_missing_role_denies_with_reason if {
	d := authz.decision with input as _call("pods_delete", _rw, _claims(["pods_list"]))
	d.allow == false
	d.reason == "mcp holds no role of mcp-test/kubernetes-mcp that grants tool pods_delete"
}

test_role_of_other_client_denies if {
	claims := {"preferred_username": "mcp", "resource_access": {_other: {"roles": ["pods_list"]}}}
	d := authz.decision with input as _call("pods_list", _ro, claims)
	d.allow == false
}

test_no_resource_access_denies if {
	d := authz.decision with input as _call("pods_list", _ro, {"sub": "0a1b"})
	d.allow == false
	startswith(d.reason, "0a1b holds no role")
}

test_no_claims_denies if {
	d := authz.decision with input as {"method": "tools/call", "server": _server, "tool": {"name": "pods_list"}}
	d.allow == false
	startswith(d.reason, "unknown user holds no role")
}

test_role_prefixes_switchable_by_data if {
	d := authz.decision with input as _call("pods_list", _ro, _claims(["tool:pods_list"]))
		with data.mcp.config as {"role_prefixes": [""]}
	d.allow == false
}

# --- malformed requests ------------------------------------------------------------------

test_missing_tool_denies if {
	d := authz.decision with input as {"method": "tools/call", "server": _server, "claims": _claims(["pods_list"])}
	d.allow == false
	d.reason == "the request names no tool (x-mcp-toolname is missing)"
}

test_missing_server_denies if {
	d := authz.decision with input as {"method": "tools/call", "tool": {"name": "pods_list"}, "claims": _claims(["pods_list"])}
	d.allow == false
	d.reason == "the request names no MCP server (x-mcp-servername is missing)"
}

test_non_string_tool_denies if {
	d := authz.decision with input as {"method": "tools/call", "server": _server, "tool": {"name": 7}, "claims": _claims(["pods_list"])}
	d.allow == false
}

# --- methods -------------------------------------------------------------------------------

test_methods_without_tool_are_allowed if {
	d := authz.decision with input as {"method": "initialize", "server": "mcpBroker", "claims": _claims([])}
	d.allow == true
	d.reason == "method initialize names no tool: no tool decision needed"
}

test_missing_method_is_allowed_without_tool if {
	d := authz.decision with input as {"server": "mcpBroker"}
	d.allow == true
	d.reason == "method (none) names no tool: no tool decision needed"
}

test_router_session_setup_for_a_tool_is_not_a_tool_decision if {
	# The hairpin names the call's tool; the call is decided on its own (with its reason).
	for_delete := _call("pods_delete", _rw, _claims(["pods_list"]))
	init := authz.decision with input as object.union(for_delete, {"method": "initialize"})
	init.allow == true
	init.reason == "method initialize names no tool: no tool decision needed"
	done := authz.decision with input as object.union(for_delete, {"method": "notifications/initialized"})
	done.allow == true
	call := authz.decision with input as for_delete
	call.allow == false
}

test_other_methods_naming_a_backend_tool_are_decided if {
	inp := object.union(_call("pods_delete", _rw, _claims(["pods_list"])), {"method": "x/custom"})
	d := authz.decision with input as inp
	d.allow == false
}

test_broker_with_tool_header_needs_no_decision if {
	inp := {"method": "tools/list", "server": "mcpBroker", "tool": {"name": "pods_delete"}, "claims": _claims([])}
	d := authz.decision with input as inp
	d.allow == true
}

# --- read-only role ------------------------------------------------------------------------

test_read_only_role_allows_read_only_tool if {
	d := authz.decision with input as _call("pods_get", _ro, _claims(["read-only"]))
	d.allow == true
	d.reason == "mcp holds role read-only of mcp-test/kubernetes-mcp and pods_get is read-only"
}

test_read_only_role_denies_destructive_tool if {
	d := authz.decision with input as _call("pods_delete", _rw, _claims(["read-only"]))
	d.allow == false
}

test_read_only_role_needs_annotation if {
	d := authz.decision with input as _call("pods_get", {}, _claims(["read-only"]))
	d.allow == false
}

test_read_only_role_name_switchable_by_data if {
	d := authz.decision with input as _call("pods_get", _ro, _claims(["viewer"]))
		with data.mcp.config as {"read_only_role": "viewer"}
	d.allow == true
}

# --- group grants --------------------------------------------------------------------------

test_group_read_only_grant if {
	claims := object.union(_claims([]), {"groups": ["/mcp-viewers"]})
	d := authz.decision with input as _call("events_list", _ro, claims) with data.mcp.config as _config
	d.allow == true
	d.reason == "group mcp-viewers grants @read-only on mcp-test/kubernetes-mcp"
}

test_group_read_only_grant_denies_destructive if {
	claims := object.union(_claims([]), {"groups": ["mcp-viewers"]})
	d := authz.decision with input as _call("resources_delete", _rw, claims) with data.mcp.config as _config
	d.allow == false
}

test_group_wildcard_grant if {
	claims := object.union(_claims([]), {"groups": ["sre"]})
	d := authz.decision with input as _call("resources_delete", _rw, claims) with data.mcp.config as _config
	d.allow == true
}

test_group_grant_is_per_server if {
	claims := object.union(_claims([]), {"groups": ["sre"]})
	inp := object.union(_call("resources_delete", _rw, claims), {"server": _other})
	d := authz.decision with input as inp with data.mcp.config as _config
	d.allow == false
}

test_group_named_tool_grant if {
	claims := object.union(_claims([]), {"groups": ["helm-users"]})
	allowed := authz.decision with input as _call("helm_list", _ro, claims) with data.mcp.config as _config
	denied := authz.decision with input as _call("helm_install", _rw, claims) with data.mcp.config as _config
	allowed.allow == true
	denied.allow == false
}

test_no_group_grants_by_default if {
	claims := object.union(_claims([]), {"groups": ["sre"]})
	d := authz.decision with input as _call("pods_list", _ro, claims)
	d.allow == false
}

# --- deny list -----------------------------------------------------------------------------

test_deny_list_wins_over_role if {
	d := authz.decision with input as _call("pods_delete", _rw, _claims(["pods_delete"])) with data.mcp.config as _config
	d.allow == false
	d.reason == "pods_delete of mcp-test/kubernetes-mcp is on the deny list: deletes go through change control"
}

test_deny_list_for_user_only if {
	intern := {"preferred_username": "intern", "resource_access": {_other: {"roles": ["pods_list"]}}}
	other := {"preferred_username": "mcp", "resource_access": {_other: {"roles": ["pods_list"]}}}
	d1 := authz.decision with input as object.union(_call("pods_list", _ro, intern), {"server": _other})
		with data.mcp.config as _config
	d2 := authz.decision with input as object.union(_call("pods_list", _ro, other), {"server": _other})
		with data.mcp.config as _config
	d1.allow == false
	d2.allow == true
}

test_deny_list_for_group_wins_over_group_grant if {
	claims := object.union(_claims(["pods_list"]), {"groups": ["mcp-suspended", "sre"]})
	d := authz.decision with input as _call("pods_list", _ro, claims) with data.mcp.config as _config
	d.allow == false
	d.reason == "pods_list of mcp-test/kubernetes-mcp is on the deny list: suspended"
}

test_deny_list_entry_without_reason if {
	d := authz.decision with input as _call("pods_list", _ro, _claims(["pods_list"]))
		with data.mcp.config as {"deny_list": [{"tools": ["pods_list"]}]}
	d.allow == false
	d.reason == "pods_list of mcp-test/kubernetes-mcp is on the deny list: denied"
}

test_default_data_suspended_group if {
	claims := object.union(_claims(["pods_list"]), {"groups": ["/mcp-suspended"]})
	d := authz.decision with input as _call("pods_list", _ro, claims)
		with data.mcp.config as {"deny_list": [{"tools": ["*"], "groups": ["mcp-suspended"], "reason": "x"}]}
	d.allow == false
}

# --- namespace rules -----------------------------------------------------------------------

_exec(namespace) := object.union(
	_call("pods_exec", _rw, _claims(["pods_exec", "helm_install", "pods_log"])),
	{"arguments": {"name": "p", "command": ["ls"], "namespace": namespace}},
)

test_namespace_denied if {
	d := authz.decision with input as _exec("kube-system") with data.mcp.config as _config
	d.allow == false
	d.reason == "pods_exec may not run in namespace kube-system: no shell in system pods"
}

test_namespace_other_allowed if {
	d := authz.decision with input as _exec("default") with data.mcp.config as _config
	d.allow == true
}

test_namespace_rule_denies_when_body_missing if {
	d := authz.decision with input as _call("pods_exec", _rw, _claims(["pods_exec"])) with data.mcp.config as _config
	d.allow == false
	contains(d.reason, "the request body was not available")
}

test_namespace_rule_can_allow_when_body_missing if {
	d := authz.decision with input as _call("pods_log", _ro, _claims(["pods_log"])) with data.mcp.config as _config
	d.allow == true
}

test_namespace_default_allowed_when_omitted if {
	inp := object.union(_call("pods_exec", _rw, _claims(["pods_exec"])), {"arguments": {"name": "p"}})
	d := authz.decision with input as inp with data.mcp.config as _config
	d.allow == true
}

test_allowed_namespaces if {
	base := _call("helm_install", _rw, _claims(["helm_install"]))
	ok := authz.decision with input as object.union(base, {"arguments": {"chart": "c", "namespace": "apps"}})
		with data.mcp.config as _config
	bad := authz.decision with input as object.union(base, {"arguments": {"chart": "c", "namespace": "prod"}})
		with data.mcp.config as _config
	omitted := authz.decision with input as object.union(base, {"arguments": {"chart": "c"}})
		with data.mcp.config as _config
	ok.allow == true
	bad.allow == false
	bad.reason == "helm_install may not run in namespace prod, which is not among its allowed namespaces: apps only"
	omitted.allow == false
	omitted.reason == "helm_install may not run in the default namespace, which is not among its allowed namespaces: apps only"
}

test_all_namespaces_denied_by_namespace_rule if {
	inp := object.union(_call("pods_exec", _rw, _claims(["pods_exec"])), {"arguments": {"all_namespaces": true}})
	d := authz.decision with input as inp with data.mcp.config as _config
	d.allow == false
	d.reason == "pods_exec may not span all namespaces: no shell in system pods"
}

test_namespace_rule_without_grant_still_denies_on_role if {
	inp := object.union(_call("pods_exec", _rw, _claims([])), {"arguments": {"namespace": "default"}})
	d := authz.decision with input as inp with data.mcp.config as _config
	d.allow == false
	startswith(d.reason, "mcp holds no role")
}

# --- tools/list: allowed_tools -------------------------------------------------------------

_catalogue := {
	_server: [
		{"name": "pods_list", "annotations": _ro},
		{"name": "pods_get", "annotations": _ro},
		{"name": "pods_delete", "annotations": _rw},
		{"name": "pods_exec", "annotations": _rw},
	],
	_other: [{"name": "pods_list", "annotations": _ro}],
}

test_allowed_tools_by_roles if {
	inp := {"method": "tools/list", "claims": _claims(["pods_list", "tool:pods_exec"]), "catalogue": _catalogue}
	authz.allowed_tools == {_server: ["pods_exec", "pods_list"], _other: []} with input as inp
}

test_allowed_tools_read_only_role if {
	inp := {"method": "tools/list", "claims": _claims(["read-only"]), "catalogue": _catalogue}
	authz.allowed_tools == {_server: ["pods_get", "pods_list"], _other: []} with input as inp
}

test_allowed_tools_deny_list_hides if {
	inp := {"method": "tools/list", "claims": _claims(["pods_list", "pods_delete"]), "catalogue": _catalogue}
	result := authz.allowed_tools with input as inp with data.mcp.config as _config
	result == {_server: ["pods_list"], _other: []}
}

test_allowed_tools_namespace_rule_does_not_hide if {
	inp := {"method": "tools/list", "claims": _claims(["pods_exec"]), "catalogue": _catalogue}
	result := authz.allowed_tools with input as inp with data.mcp.config as _config
	result[_server] == ["pods_exec"]
}

test_allowed_tools_empty_is_empty_array if {
	inp := {"method": "tools/list", "claims": {"sub": "x"}, "catalogue": _catalogue}
	authz.allowed_tools == {_server: [], _other: []} with input as inp
}

test_allowed_tools_without_catalogue_uses_roles if {
	inp := {"method": "tools/list", "claims": _claims(["pods_list", "tool:pods_list", "tool:pods_get", "read-only"])}
	authz.allowed_tools == {_server: ["pods_get", "pods_list"]} with input as inp
}

test_allowed_tools_without_anything_is_empty if {
	authz.allowed_tools == {} with input as {"method": "tools/list"}
}

# --- exported helpers ----------------------------------------------------------------------

test_grants_empty_without_roles if {
	count(authz.grants({}, _server, "pods_list", _ro)) == 0
}

test_listed_denials_default_empty if {
	count(authz.listed_denials(_claims(["pods_list"]), _server, "pods_list")) == 0
}

test_allowed_tools_from_data_catalogue if {
	inp := {"method": "tools/list", "claims": _claims(["pods_get"])}
	result := authz.allowed_tools with input as inp with data.mcp.catalogue as _catalogue
	result == {_server: ["pods_get"], _other: []}
}

test_allowed_tools_group_grants if {
	viewer := object.union(_claims([]), {"groups": ["mcp-viewers"]})
	sre := object.union(_claims([]), {"groups": ["/sre"]})
	helm := object.union(_claims([]), {"groups": ["helm-users"]})
	cat := object.union(_catalogue, {_server: array.concat(_catalogue[_server], [{"name": "helm_list", "annotations": _ro}])})
	v := authz.allowed_tools with input as {"claims": viewer, "catalogue": cat} with data.mcp.config as _config
	s := authz.allowed_tools with input as {"claims": sre, "catalogue": cat} with data.mcp.config as _config
	h := authz.allowed_tools with input as {"claims": helm, "catalogue": cat} with data.mcp.config as _config
	v == {_server: ["helm_list", "pods_get", "pods_list"], _other: ["pods_list"]}
	s == {_server: ["helm_list", "pods_exec", "pods_get", "pods_list"], _other: []}
	h == {_server: ["helm_list"], _other: []}
}

test_allowed_tools_deny_all_for_group if {
	claims := object.union(_claims(["pods_list", "pods_get"]), {"groups": ["mcp-suspended"]})
	result := authz.allowed_tools with input as {"claims": claims, "catalogue": _catalogue} with data.mcp.config as _config
	result == {_server: [], _other: []}
}

# The list (set-wise) and the per-tool decision must agree for every tool without namespace rules.
_agreement_claims := [
	_claims(["pods_list", "tool:pods_delete"]),
	_claims(["read-only"]),
	object.union(_claims(["pods_get"]), {"groups": ["mcp-viewers", "helm-users"]}),
	object.union(_claims([]), {"groups": ["/sre"]}),
	object.union(_claims(["pods_list"]), {"groups": ["mcp-suspended"]}),
	{"preferred_username": "intern", "resource_access": {_other: {"roles": ["pods_list"]}}},
]

test_list_agrees_with_decision if {
	every claims in _agreement_claims {
		listed := authz.allowed_tools with input as {"claims": claims, "catalogue": _catalogue}
			with data.mcp.config as _config
		every server, tools in _catalogue {
			every tool in tools {
				_agree(claims, server, tool, listed)
			}
		}
	}
}

_agree(claims, server, tool, listed) if {
	tool.name == "pods_exec" # namespace rules restrict calls, not the list
} else if {
	inp := {"method": "tools/call", "server": server, "tool": tool, "claims": claims, "arguments": {}}
	d := authz.decision with input as inp with data.mcp.config as _config
	shown := tool.name in listed[server]
	d.allow == shown
}

# --- the shared corpus ---------------------------------------------------------------------
# policies/mcp/testdata/corpus.json holds cases that the Python suite also runs through both
# engines (embedded rego-cpp and OPA) to prove they decide alike. "config": "default" means the
# data files of policies/data (loaded by `opa test policies/` at data.data).

test_corpus_cases_hold if {
	count(data.mcp.testdata.cases) > 50
	every case in data.mcp.testdata.cases {
		_case_holds(case)
	}
}

_case_config(case) := data.data if case.config == "default"

else := object.get(case, "config", {})

_case_holds(case) if {
	case.entrypoint == "decision"
	d := authz.decision with input as case.input with data.mcp.config as _case_config(case)
	d.allow == case.expect.allow
	object.get(case.expect, "reason", d.reason) == d.reason
} else if {
	case.entrypoint == "allowed_tools"
	got := authz.allowed_tools with input as case.input with data.mcp.config as _case_config(case)
	got == case.expect
} else := false if {
	print("corpus case failed:", case.name)
}

# --- allowed_tools_parts -------------------------------------------------------------------

test_parts_compose_to_allowed_tools if {
	every claims in _agreement_claims {
		inp := {"claims": claims, "catalogue": _catalogue}
		listed := authz.allowed_tools with input as inp with data.mcp.config as _config
		parts := authz.allowed_tools_parts with input as inp with data.mcp.config as _config
		every server, tools in _catalogue {
			_compose(parts[server], tools) == {name | some name in listed[server]}
		}
	}
}

test_parts_shape if {
	claims := object.union(_claims(["tool:pods_list", "read-only"]), {"groups": ["sre", "helm-users", "mcp-suspended"]})
	parts := authz.allowed_tools_parts with input as {"claims": claims, "catalogue": _catalogue}
		with data.mcp.config as _config
	object.remove(parts[_server], ["role_prefixes"]) == {
		"roles": ["tool:pods_list", "read-only"],
		"named": ["helm_list"],
		"read_only": true,
		"all": true,
		"deny_all": true,
		"denied": ["pods_delete"],
	}
	parts[_other].read_only == false
}

_compose(parts, _) := set() if parts.deny_all

_compose(parts, tools) := result if {
	not parts.deny_all
	names := {tool.name | some tool in tools}
	read_only := {tool.name | some tool in tools; tool.annotations.readOnly == true}
	role_names := {name |
		some role in parts.roles
		some prefix in parts.role_prefixes
		startswith(role, prefix)
		name := trim_prefix(role, prefix)
	}
	by_name := (role_names | {name | some name in parts.named}) & names
	with_ro := by_name | _if(parts.read_only, read_only)
	granted := with_ro | _if(parts.all, names)
	result := granted - {name | some name in parts.denied}
}

_if(flag, values) := values if flag

else := set()

test_broker_name_switchable_by_data if {
	inp := {"method": "x/custom", "server": "broker", "tool": {"name": "pods_delete"}, "claims": _claims([])}
	default_name := authz.decision with input as inp
	renamed := authz.decision with input as inp with data.mcp.config as {"broker_server_name": "broker"}
	default_name.allow == false
	renamed.allow == true
}

test_namespace_rule_without_reason if {
	d := authz.decision with input as _exec("kube-system")
		with data.mcp.config as {"namespace_rules": [{"tools": ["pods_exec"], "denied_namespaces": ["kube-system"]}]}
	d.reason == "pods_exec may not run in namespace kube-system: namespace rule"
}

# --- prompts -------------------------------------------------------------------------------

_get_prompt(prompt, claims) := {
	"method": "prompts/get",
	"server": _server,
	"prompt": {"name": prompt},
	"claims": claims,
}

test_prompt_role_allows_the_prompt if {
	d := authz.decision with input as _get_prompt("cluster-health-check", _claims(["prompt:cluster-health-check"]))
	d.allow == true
	d.reason == "mcp holds role prompt:cluster-health-check of mcp-test/kubernetes-mcp"
}

test_prompt_without_its_role_is_denied if {
	# A tool role of the same spelling is not a prompt grant.
	d := authz.decision with input as _get_prompt("cluster-health-check", _claims(["cluster-health-check", "pods_list"]))
	d.allow == false
	d.reason == "mcp holds no role of mcp-test/kubernetes-mcp that grants prompt cluster-health-check"
}

test_prompt_role_of_another_server_does_not_grant if {
	claims := {"preferred_username": "mcp", "resource_access": {_other: {"roles": ["prompt:cluster-health-check"]}}}
	d := authz.decision with input as _get_prompt("cluster-health-check", claims)
	d.allow == false
}

test_prompt_group_grant_allows if {
	claims := object.union(_claims([]), {"groups": ["ops"]})
	d := authz.decision with input as _get_prompt("cluster-health-check", claims)
		with data.mcp.config as {"group_grants": {"ops": {"*": ["prompt:cluster-health-check"]}}}
	d.allow == true
	d.reason == "group ops grants prompt:cluster-health-check on mcp-test/kubernetes-mcp"
}

test_prompt_deny_list_wins if {
	claims := object.union(_claims(["prompt:cluster-health-check"]), {"groups": ["mcp-suspended"]})
	d := authz.decision with input as _get_prompt("cluster-health-check", claims)
		with data.mcp.config as {"deny_list": [{"prompts": ["*"], "groups": ["mcp-suspended"], "reason": "suspended"}]}
	d.allow == false
	d.reason == "prompt cluster-health-check of mcp-test/kubernetes-mcp is on the deny list: suspended"
}

test_tool_deny_entry_leaves_prompts_alone if {
	d := authz.decision with input as _get_prompt("cluster-health-check", _claims(["prompt:cluster-health-check"]))
		with data.mcp.config as {"deny_list": [{"tools": ["*"], "reason": "no tools"}]}
	d.allow == true
}

test_prompt_request_without_name_is_denied if {
	d := authz.decision with input as {"method": "prompts/get", "server": _server, "claims": _claims(["prompt:x"])}
	d.allow == false
	d.reason == "the request names no prompt (x-mcp-promptname is missing)"
}

test_allowed_prompts_lists_granted_prompts_per_server if {
	claims := {
		"preferred_username": "mcp",
		"groups": ["ops"],
		"resource_access": {
			_server: {"roles": ["prompt:cluster-health-check", "pods_list"]},
			_other: {"roles": ["pods_list"]},
		},
	}
	catalogue := {_server: [{"name": "pods_list"}], _other: [{"name": "pods_list"}]}
	p := authz.allowed_prompts with input as {"method": "prompts/list", "claims": claims, "catalogue": catalogue}
		with data.mcp.config as {"group_grants": {"ops": {_other: ["prompt:triage"]}}}
	p == {_server: ["cluster-health-check"], _other: ["triage"]}
}

test_allowed_prompts_honours_the_deny_list if {
	claims := object.union(_claims(["prompt:a", "prompt:b"]), {"groups": ["g"]})
	catalogue := {_server: [{"name": "pods_list"}]}
	named := authz.allowed_prompts with input as {"method": "prompts/list", "claims": claims, "catalogue": catalogue}
		with data.mcp.config as {"deny_list": [{"prompts": ["a"], "groups": ["g"], "reason": "x"}]}
	named == {_server: ["b"]}
	all_denied := authz.allowed_prompts with input as {"method": "prompts/list", "claims": claims, "catalogue": catalogue}
		with data.mcp.config as {"deny_list": [{"prompts": ["*"], "groups": ["g"], "reason": "x"}]}
	all_denied == {_server: []}
}

test_prompt_roles_are_not_tools_without_a_catalogue if {
	t := authz.allowed_tools with input as {"method": "tools/list", "claims": _claims(["pods_list", "prompt:cluster-health-check"])}
	t == {_server: ["pods_list"]}
	p := authz.allowed_prompts with input as {"method": "prompts/list", "claims": _claims(["pods_list", "prompt:cluster-health-check"])}
	p == {_server: ["cluster-health-check"]}
}
