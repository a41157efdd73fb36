"""The credential leak scanner (``tests/testbed/leak_scan.py``): it finds what it must, reports
``file:line`` without the value, and the logs of this session so far hold no credential. The
same scan runs again over every log of the whole session at its end (``fixtures_leaks.py``).
Named ``zz`` so that it runs after the other reliability tests."""

from __future__ import annotations

import time
from pathlib import Path

import jwt

from tests.gateway_plugins.common.issuer import new_rsa
from tests.testbed import leak_scan


def _jwt(sub: str) -> str:
    claims = {"iss": "https://kc.test/realms/mcp", "sub": sub, "exp": int(time.time()) + 60}
    return jwt.encode(claims, new_rsa(), algorithm="RS256", headers={"kid": "k1"})


def test_scanner_finds_jwts_and_secrets_and_never_prints_them(tmp_path: Path) -> None:
    token = _jwt("alice")
    secret = "s3cr3t-value-for-the-scanner"
    (tmp_path / "svc.log").write_text(
        "ok line\n"
        f'{{"msg": "calling upstream", "authorization": "Bearer {token}"}}\n'
        "eyJhbGciOiJub25lIn0 is a header only: not a token\n"
    )
    (tmp_path / "other.jsonl").write_text(f'{{"x": 1}}\n{{"password": "{secret}"}}\n')
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "client.log").write_text(secret)  # secret files are not logs
    (tmp_path / "config.yaml").write_text(token)  # not a log file
    hits = leak_scan.scan_run_dir(tmp_path, {secret: "test secret"})
    assert [(h.path.name, h.line) for h in hits] == [("other.jsonl", 2), ("svc.log", 2)]
    text = leak_scan.report(hits)
    assert token not in text
    assert secret not in text
    assert (
        "svc.log:2: JWT (alg=RS256, kid=k1, iss=https://kc.test/realms/mcp, subject=alice)" in text
    )
    assert "other.jsonl:2: secret value (test secret)" in text


def test_recorded_outputs_are_scanned(tmp_path: Path) -> None:
    token = _jwt("bob")
    leak_scan.write_outputs(
        tmp_path / leak_scan.OUTPUTS_DIR / "outputs.log",
        [("a tool result that echoed a token", f"here: {token}")],
    )
    hits = leak_scan.scan_run_dir(tmp_path, {})
    assert len(hits) == 1
    assert hits[0].path.name == "outputs.log"
    assert "subject=bob" in hits[0].what
    assert token not in str(hits[0])


def test_logs_of_this_session_so_far_hold_no_credentials(testbed_run_dir: Path) -> None:
    recorded = len(leak_scan.pending_outputs())
    outputs = leak_scan.flush_outputs(testbed_run_dir)
    assert recorded == 0 or outputs.stat().st_size > 0
    files = list(leak_scan.files_to_scan(testbed_run_dir))
    hits = leak_scan.scan_files(files)
    assert not hits, leak_scan.report(hits)
