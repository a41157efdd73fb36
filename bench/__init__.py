"""Benchmarks (``make bench``): each ``bench/scenario_*.py`` module starts the real components it
needs from the testbed, measures side by side in one run, and returns a JSON-able dict that is
written to ``bench/results/<scenario>.json``. Timings live here, never in pass/fail tests."""
