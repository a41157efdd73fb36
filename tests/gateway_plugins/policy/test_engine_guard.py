"""Issue 14 item 5: the embedded engine (rego-cpp) must not silently decide a policy differently
from OPA. Before the fix a user's policy using a construct rego-cpp evaluates differently was
served as is; now the service proves at start that the embedded engine decides like the real OPA
(``gateway_plugins/policy/engine_guard.py``), or like a verification record says OPA did, or
refuses to start naming the case and both answers.

The policies below are small user policies built on the two constructs the guard's docstring
names: indexing what ``sort()`` returns for a set (undefined in rego-cpp, so a deny rule built on
it never fires) and a builtin-made string inside ``sprintf`` (rego-cpp's output becomes
unreadable). The OPA binary is the testbed's; "without OPA" means no ``embedded_verify.opa_binary``
and no ``opa`` on ``PATH``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway_plugins.policy.app import create_app
from gateway_plugins.policy.config import PolicySettings
from gateway_plugins.policy.engine_guard import (
    RECORD_NAME,
    EmbeddedVerifySettings,
    modules_fingerprint,
)
from gateway_plugins.policy.policy_source import PolicySourceError, load_policy_source
from tests.gateway_plugins.policy.running import (
    CALLER_HEADERS,
    POLICIES,
    SERVER,
    policy_settings,
    running_policy,
)
from tests.testbed import build
from tests.testbed.paths import REPO_ROOT

pytestmark = pytest.mark.timeout(600)

GUARD_LOG = "gateway_plugins.policy.engine_guard"
APP_LOG = "gateway_plugins.policy.app"

# A site rule on the user's groups: whoever's alphabetically first group is "hold" is denied.
# OPA: sort() of the set, then [0]. rego-cpp: sort(set)[0] is undefined, the deny never fires.
SORT_INDEX_POLICY = """package mcp.authz

_groups := {g | some g in object.get(object.get(input, "claims", {}), "groups", [])}

decision := {"allow": false, "reason": "the user's first group is on hold"} if {
	sort(_groups)[0] == "hold"
} else := {"allow": true, "reason": "granted"}

allowed_tools := {}

allowed_tools_parts := {}

allowed_prompts := {}
"""

# A reason made with a builtin's string inside sprintf: rego-cpp's answer cannot be read.
SPRINTF_POLICY = """package mcp.authz

_user := object.get(object.get(input, "claims", {}), "preferred_username", "nobody")

decision := {"allow": true, "reason": sprintf("%s may call tools", [upper(_user)])}

allowed_tools := {}

allowed_tools_parts := {}

allowed_prompts := {}
"""


def _call(name: str, groups: list[str] | None, expect: dict[str, Any]) -> dict[str, Any]:
    claims: dict[str, Any] = {"preferred_username": "ann", "sub": "ann-1"}
    if groups is not None:
        claims["groups"] = groups
    return {
        "name": name,
        "entrypoint": "decision",
        "input": {
            "method": "tools/call",
            "server": SERVER,
            "tool": {"name": "pods_list", "annotations": {}},
            "claims": claims,
        },
        "expect": expect,
    }


# The corpus a user would write for the sort policy, which happens not to exercise the site rule
# (the first group is never "hold"): the embedded engine meets every expectation.
CORPUS_MISSING_THE_RULE = [
    _call("alpha leads", ["alpha", "hold"], {"allow": True}),
    _call("no groups", None, {"allow": True, "reason": "granted"}),
]
# ... and one that exercises it: the embedded engine fails the case.
CORPUS_WITH_THE_RULE = [
    *CORPUS_MISSING_THE_RULE,
    _call("hold leads", ["hold", "zulu"], {"allow": False}),
]


def user_policy(root: Path, rego: str, cases: list[dict[str, Any]]) -> Path:
    """A policy folder as an operator ships one: module, data folder, test corpus."""
    root.mkdir(parents=True)
    (root / "site.rego").write_text(rego)
    (root / "data").mkdir()
    (root / "testdata").mkdir()
    (root / "testdata" / "corpus.json").write_text(json.dumps({"cases": cases}))
    return root


def opa() -> Path:
    return build.binary("opa")


@pytest.fixture
def no_opa_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A machine without OPA: nothing named opa on PATH (the guard then needs the record)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("opa") is None


def settings_for(keycloak: Any, work: Path, policies: Path, **verify: Any) -> PolicySettings:
    settings = policy_settings(keycloak, work)
    return settings.model_copy(
        update={
            "policies_dir": policies,
            "embedded_verify": EmbeddedVerifySettings(**verify),
        }
    )


def refusal(settings: PolicySettings) -> str:
    with pytest.raises(PolicySourceError) as refused:
        create_app(settings)
    return str(refused.value)


# -- with OPA at hand: both engines must give the same answers ----------------------------------
async def test_a_policy_rego_cpp_decides_differently_is_refused_when_opa_is_available(
    keycloak: Any, tmp_path: Path
) -> None:
    """The corpus does not reach the site rule, so only the comparison with OPA (on variants of
    the corpus) finds that rego-cpp never denies: the answers are named in the refusal."""
    policies = user_policy(tmp_path / "sort", SORT_INDEX_POLICY, CORPUS_MISSING_THE_RULE)
    message = refusal(settings_for(keycloak, tmp_path / "svc", policies, opa_binary=opa()))
    assert "the embedded engine (rego-cpp) decides 'generated #" in message
    assert "differently from OPA" in message
    assert 'embedded {"allow": true, "reason": "granted"}' in message
    assert 'OPA {"allow": false, "reason": "the user\'s first group is on hold"}' in message
    assert "run it with engine: opa, or rewrite that rule" in message


async def test_a_corpus_case_rego_cpp_answers_differently_is_named(
    keycloak: Any, tmp_path: Path
) -> None:
    policies = user_policy(tmp_path / "sort", SORT_INDEX_POLICY, CORPUS_WITH_THE_RULE)
    message = refusal(settings_for(keycloak, tmp_path / "svc", policies, opa_binary=opa()))
    assert "decides 'hold leads' differently from OPA" in message


async def test_a_sprintf_of_a_builtins_string_is_refused_when_opa_is_available(
    keycloak: Any, tmp_path: Path
) -> None:
    cases = [_call("anyone may call", [], {"allow": True})]
    policies = user_policy(tmp_path / "sprintf", SPRINTF_POLICY, cases)
    message = refusal(settings_for(keycloak, tmp_path / "svc", policies, opa_binary=opa()))
    assert "decides 'anyone may call' differently from OPA" in message
    assert "policy evaluation returned unreadable output" in message
    assert 'OPA {"allow": true, "reason": "ANN may call tools"}' in message


# -- without OPA: the corpus must hold, and the record must name these modules ------------------
@pytest.mark.usefixtures("no_opa_on_path")
async def test_without_opa_or_a_matching_record_the_policy_is_refused(
    keycloak: Any, tmp_path: Path
) -> None:
    policies = user_policy(tmp_path / "sort", SORT_INDEX_POLICY, CORPUS_MISSING_THE_RULE)
    message = refusal(settings_for(keycloak, tmp_path / "svc", policies))
    assert "no OPA binary is available to compare the embedded engine with" in message
    assert f"the verification record {policies / RECORD_NAME} is missing" in message
    assert "mcp-policy verify-embedded --record" in message
    assert "embedded_verify.allow_unverified: true" in message
    # A record of other modules (the shipped policy's) does not vouch for these.
    shutil.copy(POLICIES / RECORD_NAME, policies / RECORD_NAME)
    message = refusal(settings_for(keycloak, tmp_path / "svc", policies))
    assert f"the verification record {policies / RECORD_NAME} names other modules" in message


@pytest.mark.usefixtures("no_opa_on_path")
async def test_without_opa_a_failing_corpus_case_refuses_even_when_unverified_is_allowed(
    keycloak: Any, tmp_path: Path
) -> None:
    policies = user_policy(tmp_path / "sort", SORT_INDEX_POLICY, CORPUS_WITH_THE_RULE)
    for allow_unverified in (False, True):
        settings = settings_for(
            keycloak, tmp_path / "svc", policies, allow_unverified=allow_unverified
        )
        message = refusal(settings)
        assert "the embedded engine (rego-cpp) fails corpus case 'hold leads'" in message
        assert 'it answers {"allow": true, "reason": "granted"}' in message
        assert 'the corpus expects {"allow": false}' in message


@pytest.mark.usefixtures("no_opa_on_path")
async def test_allow_unverified_starts_the_policy_with_a_warning(
    keycloak: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policies = user_policy(tmp_path / "sort", SORT_INDEX_POLICY, CORPUS_MISSING_THE_RULE)
    settings = settings_for(keycloak, tmp_path / "svc", policies, allow_unverified=True)
    token = await keycloak.auser_token("viewer", "viewer")
    with caplog.at_level(logging.INFO):
        async with (
            running_policy(settings) as svc,
            aiohttp.ClientSession(headers=CALLER_HEADERS) as http,
            http.post(
                f"{svc.url}/v1/decide",
                json={"server": SERVER, "tool": "pods_list"},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            answer = await resp.json()
    assert (resp.status, answer["allow"], answer["reason"]) == (200, True, "granted")
    warnings = [r for r in caplog.records if r.name == GUARD_LOG and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "starting the embedded engine unverified" in warnings[0].getMessage()
    assert "UNVERIFIED (allow_unverified)" in caplog.text


# -- the shipped policy -------------------------------------------------------------------------
def test_the_shipped_record_names_the_shipped_modules() -> None:
    """A Rego change without `mcp-policy verify-embedded --record` would make every start
    without OPA refuse: the record must follow the modules."""
    record = json.loads((POLICIES / RECORD_NAME).read_text())
    assert record["modules_sha256"] == modules_fingerprint(load_policy_source(POLICIES))
    assert record["compared_with_opa"] > record["corpus_cases"] > 0


@pytest.mark.usefixtures("no_opa_on_path")
async def test_the_shipped_policy_starts_with_its_record_without_opa(
    keycloak: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=APP_LOG):
        async with running_policy(policy_settings(keycloak, tmp_path / "svc")):
            pass
    assert "embedded engine verified" in caplog.text
    assert "the modules match the verification record" in caplog.text
    assert "UNVERIFIED" not in caplog.text


async def test_the_shipped_policy_starts_compared_with_opa(
    keycloak: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(keycloak, tmp_path / "svc", POLICIES, opa_binary=opa())
    with caplog.at_level(logging.INFO, logger=APP_LOG):
        async with running_policy(settings):
            pass
    assert "case(s) decide alike in OPA 1." in caplog.text


# -- mcp-policy verify-embedded --record ---------------------------------------------------------
async def _mcp_policy(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "mcp-policy"), *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


def _copy_of_the_shipped_policy(target: Path, extra_rule: str) -> Path:
    """The shipped policy with a site's own addition (so the shipped record no longer fits)."""
    shutil.copytree(POLICIES, target, ignore=shutil.ignore_patterns(RECORD_NAME))
    with (target / "mcp" / "authz.rego").open("a") as f:
        f.write(extra_rule)
    return target


@pytest.mark.usefixtures("no_opa_on_path")
async def test_verify_embedded_record_lets_the_policy_start_without_opa(
    keycloak: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policies = _copy_of_the_shipped_policy(
        tmp_path / "policies", '\n# a site addition\n_site_contact := "ops@example.com"\n'
    )
    settings = settings_for(keycloak, tmp_path / "svc", policies)
    assert "is missing" in refusal(settings)
    code, out, err = await _mcp_policy(
        "verify-embedded", "--policies-dir", str(policies), "--opa", str(opa()), "--record"
    )
    assert code == 0, err
    assert out.startswith("ok: 60 corpus case(s) hold in the embedded engine; ")
    assert "case(s) decide alike in OPA" in out
    assert f"wrote {policies / RECORD_NAME}" in out
    record = json.loads((policies / RECORD_NAME).read_text())
    assert record["modules_sha256"] == modules_fingerprint(load_policy_source(policies))
    with caplog.at_level(logging.INFO, logger=APP_LOG):
        async with running_policy(settings):
            pass
    assert "the modules match the verification record" in caplog.text
    # Any later change to the Rego needs a new record.
    with (policies / "mcp" / "authz.rego").open("a") as f:
        f.write('\n_site_pager := "ops-pager"\n')
    assert "names other modules" in refusal(settings)


async def test_verify_embedded_refuses_a_divergent_policy_and_writes_no_record(
    tmp_path: Path,
) -> None:
    policies = user_policy(tmp_path / "sort", SORT_INDEX_POLICY, CORPUS_MISSING_THE_RULE)
    code, out, err = await _mcp_policy(
        "verify-embedded", "--policies-dir", str(policies), "--opa", str(opa()), "--record"
    )
    assert code == 1, (out, err)
    assert err.startswith("mcp-policy: the embedded engine (rego-cpp) decides 'generated #")
    assert "Traceback" not in err
    assert not (policies / RECORD_NAME).exists()


async def test_serve_refuses_the_divergent_policy_with_a_clear_message(
    keycloak: Any, tmp_path: Path
) -> None:
    """The service as deployed (`mcp-policy serve --config`): exit 1, the reason, no traceback."""
    policies = user_policy(tmp_path / "sort", SORT_INDEX_POLICY, CORPUS_MISSING_THE_RULE)
    settings = settings_for(keycloak, tmp_path / "svc", policies, opa_binary=opa())
    config = tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    code, _, err = await _mcp_policy("serve", "--config", str(config))
    assert code == 1, err
    assert "mcp-policy: the embedded engine (rego-cpp) decides 'generated #" in err
    assert "differently from OPA" in err
    assert "Traceback" not in err
