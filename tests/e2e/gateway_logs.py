"""What the running local gateway records, as the e2e tests read it: the policy service's decision
log from a point on (all decisions, or the hairpin ``initialize``s it allowed), and the counters
of the gateway's Envoy (admin ``/stats`` and ``/clusters``).
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from typing import Any

from tests.testbed.mcp_gateway.stack import LocalGateway


class Decisions:
    """The policy service's decision log from a point on (one JSON object a line): from when this
    object is made, or from the start of the log."""

    def __init__(self, gateway: LocalGateway, *, from_start: bool = False) -> None:
        self.path = gateway.gateway_dir / "policy-decisions.jsonl"
        self.start = 0 if from_start else self.path.stat().st_size

    def new(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


def envoy_counter(gateway: LocalGateway, name: str) -> int:
    """One counter of the gateway's Envoy (admin ``/stats``); 0 before it first counts."""
    with urllib.request.urlopen(f"{gateway.envoy.admin_url}/stats", timeout=10) as resp:  # noqa: S310
        for line in resp.read().decode().splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
    return 0


class Hairpins(Decisions):
    """Hairpin ``initialize``s the policy allowed (one per server initialization), from a point
    on: the router's ``initialize`` reaches a server's route, where the policy runs on it."""

    def per_server(self) -> Counter[str]:
        return Counter(
            d["server"]
            for d in self.new()
            if d["method"] == "initialize" and d["server"] != "mcpBroker"
        )


def envoy_requests(gateway: LocalGateway, cluster: str) -> dict[str, int]:
    """Requests (ext_proc streams for the router) Envoy sent to each replica of ``cluster``."""
    ports = {
        str(p.router if cluster == "mcp_router" else p.broker): name
        for name, p in gateway.brokers.items()
    }
    url = f"{gateway.envoy.admin_url}/clusters"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback admin
        text = resp.read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "rq_total":
            counts[ports[parts[1].rsplit(":", 1)[1]]] = int(parts[3])
    return counts
