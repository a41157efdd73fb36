"""Issue 8: faults, hostile input, property-based tests, leak scan and two-user isolation."""
