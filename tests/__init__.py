"""Test suite: mirrors the package layout; the real-component testbed lives in tests.testbed."""
