"""The Kubernetes API client: one pooled session per cluster, and what is built on it.

Requests and streamed reads (``client``), exec, discovery, the cluster registry that binds a
cluster to the caller's (possibly exchanged, ``token_exchange``) token, and the decoding of list
and Table answers.
"""
