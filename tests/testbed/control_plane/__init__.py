"""Starting a testbed cluster: the plan (ports, PKI, configuration files), the components' command
lines and the start in stages; the configuration data (kwok resources, the API server's audit
policy) lives next to the code. The running cluster is :class:`tests.testbed.cluster.Cluster`."""
