"""What the testbed's real kubelet node (:mod:`tests.testbed.kubelet`) is started with: its
configuration (kubelet and containerd, ``containerd.toml`` as data), its identity and its private
mount namespace."""
