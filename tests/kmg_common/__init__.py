"""Tests of the code shared by the services (kmg_common)."""
