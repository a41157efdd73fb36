"""What tools do on a cluster: generic object operations, rollouts, pod logs, server-side dry
runs and workload diagnosis (through a :class:`~mcp_backend.kube.clusters.Api`)."""
