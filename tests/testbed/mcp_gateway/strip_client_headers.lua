-- Envoy Lua filter kmg.strip_client_headers (envoy_filters.py): drop every client-supplied
-- x-mcp-* and x-authorized-tools header (the router and the policy set them, never a client).
function envoy_on_request(handle)
  local forged = {}
  for key, _ in pairs(handle:headers()) do
    local k = string.lower(key)
    if string.sub(k, 1, 6) == "x-mcp-" or k == "x-authorized-tools" then
      table.insert(forged, key)
    end
  end
  for _, key in ipairs(forged) do
    handle:headers():remove(key)
  end
end
