"""The README's settings reference, generated from the services' typed settings models.

``python -m tests.readme_options --write`` rewrites the block between the markers in README.md;
``tests/test_readme.py`` fails when the README and the models disagree.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pydantic import BaseModel

from gateway_plugins.policy.config import SERVICE as POLICY_SERVICE
from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.token_exchange.config import SERVICE as EXCHANGE_SERVICE
from gateway_plugins.token_exchange.config import Settings as ExchangeSettings
from kmg_common.settings import env_prefix, option_rows
from mcp_backend.config import ENV_PREFIX as BACKEND_ENV_PREFIX
from mcp_backend.config import Settings as BackendSettings
from tests.readme_blocks import GeneratedBlock

BEGIN = "<!-- settings-reference:begin (generated: python -m tests.readme_options --write) -->"
END = "<!-- settings-reference:end -->"


@dataclass(frozen=True)
class ServiceDoc:
    title: str
    command: str
    env: str
    model: type[BaseModel]


SERVICES = (
    ServiceDoc(
        "mcp_backend", "mcp-backend serve --config FILE", BACKEND_ENV_PREFIX, BackendSettings
    ),
    ServiceDoc(
        "gateway_plugins.token_exchange",
        "mcp-token-exchange serve --config FILE",
        env_prefix(EXCHANGE_SERVICE),
        ExchangeSettings,
    ),
    ServiceDoc(
        "gateway_plugins.policy",
        "mcp-policy serve --config FILE",
        env_prefix(POLICY_SERVICE),
        PolicySettings,
    ),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def render() -> str:
    parts = [BEGIN]
    for svc in SERVICES:
        parts += [
            "",
            f"### `{svc.title}` (`{svc.command}`)",
            "",
            f"YAML keys as below; env vars `{svc.env}<KEY>` (nested keys joined with `__`); "
            "command-line flags win over both (`--help`).",
            "",
            "| setting | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for row in option_rows(svc.model):
            if row.kind is None:
                parts.append(f"| **`{row.name}`** | section | | {_cell(row.description)} |")
            else:
                parts.append(
                    f"| `{row.name}` | `{_cell(row.kind)}` | `{_cell(row.default)}` "
                    f"| {_cell(row.description)} |"
                )
    parts += ["", END]
    return "\n".join(parts)


BLOCK = GeneratedBlock(BEGIN, END, render)
current_block = BLOCK.current


def main(argv: list[str] | None = None) -> int:
    return BLOCK.main(__doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
