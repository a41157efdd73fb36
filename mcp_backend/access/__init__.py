"""Access control: the policy (denied kinds, Secret redaction) and the layer around each
cluster's HTTP client session that enforces it on every request sent to an API server."""
