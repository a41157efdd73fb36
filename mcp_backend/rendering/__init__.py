"""Tool output: compact tables, YAML, quantities and the size cap. Pure."""
