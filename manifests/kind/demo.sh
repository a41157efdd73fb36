#!/usr/bin/env bash
# The flow on the Kind cluster of `make kind-up kind-deploy` (run through `make kind-demo`):
#  1. user "mcp" logs in to realm mcp (password grant of the public demo client mcp-cli);
#  2. the token-exchange facade (RFC 8693) gives a token for the backend's audience;
#  3. the Kind API server accepts that token as user oidc:mcp (structured authentication config);
#  4. the MCP backend lists namespaces with the user's own RBAC (token passthrough);
#  5. the same user through the real MCP Gateway (Istio's gateway: the router's ext_proc, our
#     combined ext_authz check, the broker): the tools list, then kube_namespaces_list.
# Demo-only credentials, the same as manifests/keycloak/*.json. Tokens are never printed.
set -euo pipefail
: "${KUBECTL:?}" "${PKI:?}" "${RUN_DIR:?}" "${PY:?}"
KEYCLOAK_HOST=keycloak.keycloak.svc.cluster.local
MCP_HOST=mcp.127-0-0-1.sslip.io  # the Gateway's "mcp" listener (manifests/kind/gateway.yaml)
KC_PORT=18443 TE_PORT=18081 BE_PORT=18080 GW_PORT=18888

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
forward() {  # namespace service local:remote
  $KUBECTL -n "$1" port-forward "svc/$2" "$3" >"$RUN_DIR/port-forward-$2.log" 2>&1 &
  pids+=("$!")
}
forward keycloak keycloak "$KC_PORT:8443"
forward kmg-system token-exchange "$TE_PORT:8080"
forward kmg-system mcp-backend "$BE_PORT:8080"
forward gateway-system mcp-gateway-istio "$GW_PORT:8080"  # Istio names it <gateway>-istio
for port in "$KC_PORT" "$TE_PORT" "$BE_PORT" "$GW_PORT"; do
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
done

json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

echo "1. user mcp logs in to realm mcp"
user_token=$(curl -sf --cacert "$PKI/ca.crt" --resolve "$KEYCLOAK_HOST:$KC_PORT:127.0.0.1" \
  "https://$KEYCLOAK_HOST:$KC_PORT/realms/mcp/protocol/openid-connect/token" \
  -d grant_type=password -d client_id=mcp-cli -d username=mcp -d password=mcp -d scope=openid \
  | json_field access_token)

echo "2. exchange it for audience mcp-test/kubernetes-mcp (token-exchange facade)"
backend_token=$(curl -sf -u mcp-backend:mcp-backend-facade-demo-only \
  "http://127.0.0.1:$TE_PORT/token" \
  -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
  -d subject_token_type=urn:ietf:params:oauth:token-type:access_token \
  -d audience=mcp-test/kubernetes-mcp --data-urlencode "subject_token=$user_token" \
  | json_field access_token)

echo "3. the API server knows the bearer of that token as:"
$KUBECTL auth whoami --token="$backend_token" -o jsonpath='{.status.userInfo.username}{"\n"}'

echo "4. the backend lists namespaces as that user (tools/call namespaces_list):"
curl -sf "http://127.0.0.1:$BE_PORT/mcp" \
  -H "Authorization: Bearer $backend_token" -H 'Content-Type: application/json' \
  -H 'Accept: application/json, text/event-stream' \
  -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"namespaces_list","arguments":{}}}' \
  | python3 -c 'import json, sys; r = json.load(sys.stdin); print(r.get("result", {}).get("content", [{}])[0].get("text", r))'

echo "5. the same user through the MCP Gateway (router, ext_authz exchange + policy, broker):"
KMG_TOKEN="$user_token" "$PY" -m tests.manifests.kind_flow demo \
  --url "http://127.0.0.1:$GW_PORT/mcp" --host "$MCP_HOST"
