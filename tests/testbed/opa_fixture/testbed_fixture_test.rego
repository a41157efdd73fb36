package testbed.fixture_test

import data.testbed.fixture

test_mcp_may_use_a_read_only_tool if {
	fixture.allow with input as {"user": "mcp", "tool": "pods_list"}
}

test_mcp_may_not_use_a_write_tool if {
	not fixture.allow with input as {"user": "mcp", "tool": "pods_delete"}
}

test_other_users_may_not if {
	not fixture.allow with input as {"user": "eve", "tool": "pods_list"}
}
