# A tiny policy the testbed loads beside policies/ so a test can prove that the real OPA server
# answers queries for a policy read from disk. Not used by the gateway.
package testbed.fixture

default allow := false

allow if {
	input.user == "mcp"
	input.tool in data.testbed.fixture.read_only_tools
}

read_only_tools := {"pods_list", "pods_get", "namespaces_list"}
