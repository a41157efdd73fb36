"""The testbed: real upstream components (kube-apiserver, etcd, kwok, Keycloak, OPA, Envoy, helm)
built or fetched once into a cache outside the clone, and started on 127.0.0.1 for tests and the
local demo. No Docker, no mocks."""
