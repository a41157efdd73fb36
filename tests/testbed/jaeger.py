"""A real trace collector for the testbed: Jaeger v2 (``cmd/jaeger``, an OpenTelemetry Collector
build) with in-memory storage, on free loopback ports.

Built from the Go module proxy by ``python -m tests.testbed.build`` (``tests/testbed/go/jaeger``).
It receives OTLP over gRPC (the API servers, Envoy) and over HTTP (our services, at
:attr:`Jaeger.otlp_http_traces_url`) and answers Jaeger's query API
(``GET /api/traces/<trace id>``, ``/api/services``, the UI at :attr:`Jaeger.ui_url`).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import build, process
from tests.testbed.ports import free_port

MAX_TRACES = 20_000  # memory bound of the in-memory store (oldest traces dropped first)


@dataclass
class Jaeger(process.Supervised):
    run_dir: Path
    name: str = "jaeger"
    otlp_grpc_port: int = field(default_factory=free_port)
    otlp_http_port: int = field(default_factory=free_port)
    query_port: int = field(default_factory=free_port)
    query_grpc_port: int = field(default_factory=free_port)
    _proc: process.ManagedProcess | None = None

    @property
    def otlp_grpc_endpoint(self) -> str:
        """``host:port`` of the OTLP/gRPC receiver (kube-apiserver's TracingConfiguration)."""
        return f"127.0.0.1:{self.otlp_grpc_port}"

    @property
    def otlp_http_traces_url(self) -> str:
        """The OTLP/HTTP traces URL (our services' ``tracing.endpoint``)."""
        return f"http://127.0.0.1:{self.otlp_http_port}/v1/traces"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def config(self) -> dict[str, Any]:
        return {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query"],
                "pipelines": {
                    "traces": {"receivers": ["otlp"], "exporters": ["jaeger_storage_exporter"]}
                },
                # no own metrics endpoint (it would take the fixed port 8888)
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
            },
            "extensions": {
                "jaeger_storage": {
                    "backends": {"memstore": {"memory": {"max_traces": MAX_TRACES}}}
                },
                "jaeger_query": {
                    "storage": {"traces": "memstore"},
                    "http": {"endpoint": f"127.0.0.1:{self.query_port}"},
                    "grpc": {"endpoint": f"127.0.0.1:{self.query_grpc_port}"},
                },
            },
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": self.otlp_grpc_endpoint},
                        "http": {"endpoint": f"127.0.0.1:{self.otlp_http_port}"},
                    }
                }
            },
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
        }

    def start(self, timeout: float = 30.0) -> Jaeger:
        if self._proc is not None and self._proc.running:
            return self
        config = self.run_dir / f"{self.name}.yaml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self._start_process(
            self.name,
            [str(build.binary("jaeger")), f"--config=file:{config}"],
            self.run_dir / f"{self.name}.log",
            ready=lambda: process.http_ok(f"{self.ui_url}/api/services"),
            what="query API up",
            timeout=timeout,
        )
        return self

    def _get(self, path: str) -> Any:
        req = urllib.request.Request(f"{self.ui_url}{path}")  # noqa: S310 - loopback URL
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace (Jaeger's JSON: ``spans``, ``processes``), None while it is unknown."""
        doc = self._get(f"/api/traces/{trace_id}")
        data = (doc or {}).get("data") or []
        return data[0] if data else None

    def services(self) -> list[str]:
        return list((self._get("/api/services") or {}).get("data") or [])

    def find_traces(self, service: str, *, limit: int = 200, lookback: str = "1h") -> list[Any]:
        """Recent traces with a span of ``service`` (newest first, as Jaeger answers)."""
        doc = self._get(f"/api/traces?service={service}&limit={limit}&lookback={lookback}")
        return list((doc or {}).get("data") or [])

    def wait_trace(
        self, trace_id: str, *, services: set[str], timeout: float = 30.0
    ) -> dict[str, Any]:
        """The trace once it has spans of every one of ``services`` (the exporters batch)."""
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while True:
            found = self.trace(trace_id)
            if found is not None:
                seen = {p["serviceName"] for p in found["processes"].values()}
                if services <= seen:
                    return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"trace {trace_id} in Jaeger has spans of {sorted(seen)}, not of "
                    f"{sorted(services - seen)} after {timeout:g}s"
                )
            time.sleep(0.5)
