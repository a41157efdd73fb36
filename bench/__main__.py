"""Run the benchmark scenarios: ``python -m bench [--only NAME ...] [--soak]``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _scenarios() -> list[str]:
    return sorted(p.stem.removeprefix("scenario_") for p in HERE.glob("scenario_*.py"))


async def _run_one(name: str, soak: bool) -> dict[str, Any]:
    module = importlib.import_module(f"bench.scenario_{name}")
    started = time.time()
    result: dict[str, Any] = await module.run(soak=soak)
    return {
        "scenario": name,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "result": result,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", default=[], help=f"one of {_scenarios()}")
    parser.add_argument("--soak", action="store_true", help="run the long soak scenario only")
    args = parser.parse_args(argv)
    names = ["soak"] if args.soak else (args.only or [n for n in _scenarios() if n != "soak"])
    RESULTS.mkdir(exist_ok=True)
    failed = 0
    for name in names:
        print(f"[bench] {name} ...", flush=True)
        try:
            report = asyncio.run(_run_one(name, args.soak))
        except Exception as exc:  # report and continue with the other scenarios
            print(f"[bench] {name} failed: {exc!r}", file=sys.stderr, flush=True)
            failed += 1
            continue
        out = RESULTS / f"{name}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["result"], indent=2), flush=True)
        print(f"[bench] {name}: written to {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
