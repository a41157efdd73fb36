"""What the policy service needs from a decision engine, and what engines share.

Two engines implement :class:`DecisionEngine` and give the same answers for
``data.mcp.authz.decision``, the prompt lists of ``data.mcp.authz.allowed_prompts`` and the tool
lists of ``data.mcp.authz.allowed_tools`` (the differential test proves the two agree):

* :class:`.embedded_engine.EmbeddedEngine` (default, no extra process): rego-cpp through PyPI
  ``regopy``; the policy is compiled once at start, decisions run inline.
* :class:`.opa_engine.OpaServerEngine`: an OPA server through ``opa-python-client``.

The modules and data both evaluate are a :class:`.policy_source.PolicySource`. Only those two
engine modules talk to OPA or import a Rego engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway_plugins.policy.input import Catalogue, normalize_allowed

PACKAGE = "mcp/authz"
DECISION = "decision"
ALLOWED_TOOLS = "allowed_tools"
ALLOWED_TOOLS_PARTS = "allowed_tools_parts"
ALLOWED_PROMPTS = "allowed_prompts"
CONFIG_PATH = "mcp/config"
CATALOGUE_PATH = "mcp/catalogue"
POLICY_ID_PREFIX = "kube-mcp-gateway"


class EngineUnavailable(Exception):
    """The engine cannot decide now (OPA unreachable, policy missing); safe to show."""


class PolicyError(Exception):
    """The policy gave no usable answer (undefined, wrong shape); safe to show."""


@dataclass(frozen=True)
class Decision:
    allow: bool
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"allow": self.allow, "reason": self.reason}


class DecisionEngine(Protocol):
    """What the service needs from an engine."""

    name: str

    async def start(self) -> None: ...

    async def evaluate(self, doc: Mapping[str, Any]) -> Decision: ...

    async def allowed_tools(self, doc: Mapping[str, Any]) -> dict[str, list[str]]: ...

    async def allowed_prompts(self, doc: Mapping[str, Any]) -> dict[str, list[str]]: ...

    async def check_ready(self) -> None: ...

    async def close(self) -> None: ...


def decision_from(value: Any) -> Decision:
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("allow"), bool)
        or not isinstance(value.get("reason"), str)
    ):
        raise PolicyError("the policy's decision is not {allow: bool, reason: string}")
    return Decision(value["allow"], value["reason"])


def allowed_from(
    value: Any, catalogue: Catalogue | None, what: str = ALLOWED_TOOLS
) -> dict[str, list[str]]:
    if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
        raise PolicyError(f"the policy's {what} is not {{server: [name, ...]}}")
    return normalize_allowed(value, (catalogue or {}).keys())


PROBE_INPUT: dict[str, Any] = {"method": "initialize", "server": "mcpBroker", "claims": {}}


def first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
