"""Code shared by the three services (settings, logging, tracing)."""
