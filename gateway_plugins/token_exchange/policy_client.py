"""The combined check's second half: ask the policy service's ext_authz check endpoint.

Istio before 1.30 allows one CUSTOM ext_authz provider per gateway, so ``/ext-authz/combined``
exchanges the caller's token and then asks the policy service (``ext_authz.policy_url``, its
``/check`` endpoint) in the same round trip. The policy call carries the exchanged token as
``authorization``, the request's ``x-mcp-*`` headers (and body, for argument rules) and this
service's caller credential for the policy's check (``ext_authz.policy_caller_*``).

Fail closed: only a policy ``200`` whose JSON says ``"allow": true`` allows. A ``403`` is the
policy's denial, unless it refused this service's own caller credential
(``caller_unauthenticated``): that is a 503 ``policy_caller_refused`` and an ERROR in the log, a
broken deployment rather than a decision about the user. Anything else (unreachable, timeout,
5xx, an answer that is not JSON) is a 503.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from gateway_plugins.common.middlewares import REQUEST_ID_HEADER
from gateway_plugins.token_exchange.metrics import ExchangeMetrics

log = logging.getLogger(__name__)

MCP_HEADER_PREFIX = "x-mcp-"
# Envoy marks a request body it cut at max_request_bytes; the policy then treats the arguments as
# unavailable, so the mark must travel with the body.
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
_MAX_REASON = 500
_MAX_ANSWER_BYTES = 1 << 20


@dataclass(frozen=True)
class PolicyAnswer:
    """What the combined check answers after asking the policy service."""

    allow: bool
    status: int  # 200 allow; 400 bad request; 403 deny; 503 policy service not usable
    reason: str
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # for upstream, on allow only


def _reason(payload: Any, fallback: str) -> str:
    reason = payload.get("reason") if isinstance(payload, dict) else None
    if not isinstance(reason, str) or not reason.strip():
        return fallback
    reason = reason.strip()
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 1] + "…"


def _caller_refused(payload: Any) -> bool:
    """The policy's answer to a caller without its credential (``caller_auth``)."""
    return isinstance(payload, dict) and payload.get("error") == "caller_unauthenticated"


class PolicyClient:
    """Calls ``<policy_url><original path>`` over the service's shared client session."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        timeout_s: float,
        upstream_headers: Sequence[str],
        metrics: ExchangeMetrics,
        caller_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s
        self._upstream = tuple(h.lower() for h in upstream_headers)
        self._metrics = metrics
        self._caller = dict(caller_headers or {})  # this service's credential at the policy

    def _result(self, result: str, started: float) -> None:
        self._metrics.policy_calls.labels(result).inc()
        self._metrics.policy_latency.observe(time.perf_counter() - started)

    async def check(
        self,
        *,
        token: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None,
        request_id: str | None,
    ) -> PolicyAnswer:
        """Ask the policy about this request, presenting ``token`` (the exchanged one).

        ``path`` is what followed the combined endpoint's prefix (Envoy appends the original
        path), appended to ``policy_url`` as Envoy's ``path_prefix`` would.
        """
        outgoing = {k: v for k, v in headers.items() if k.lower().startswith(MCP_HEADER_PREFIX)}
        if PARTIAL_BODY_HEADER in headers:
            outgoing[PARTIAL_BODY_HEADER] = headers[PARTIAL_BODY_HEADER]
        if request_id:
            outgoing[REQUEST_ID_HEADER] = request_id
        if body and "content-type" in headers:
            outgoing["content-type"] = headers["content-type"]
        outgoing["authorization"] = f"Bearer {token}"
        outgoing.update(self._caller)
        url = URL(self.url + path, encoded=True)
        started = time.perf_counter()
        try:
            async with self._session.post(
                url,
                headers=outgoing,
                data=body or b"",
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                raw = await resp.content.read(_MAX_ANSWER_BYTES)
                answer_headers = resp.headers
        except TimeoutError:
            self._result("timeout", started)
            log.warning("policy service at %s did not answer within %ss", self.url, self._timeout_s)
            return self._unavailable(
                "policy_timeout", f"the policy service did not answer within {self._timeout_s}s"
            )
        except aiohttp.ClientError as exc:
            self._result("unreachable", started)
            log.warning("policy service at %s unreachable: %s", self.url, exc)
            return self._unavailable(
                "policy_unreachable", f"the policy service is unreachable ({type(exc).__name__})"
            )
        try:
            payload: Any = json.loads(raw)
        except ValueError:
            payload = None
        return self._interpret(status, payload, answer_headers, started)

    def _interpret(
        self, status: int, payload: Any, headers: Mapping[str, str], started: float
    ) -> PolicyAnswer:
        if status == 200:
            if isinstance(payload, dict) and payload.get("allow") is True:
                self._result("allow", started)
                passed = {h: headers[h] for h in self._upstream if h in headers}
                return PolicyAnswer(True, 200, _reason(payload, "allowed by policy"), None, passed)
            self._result("error", started)
            log.warning("policy service at %s answered 200 without allow: true", self.url)
            return self._unavailable(
                "policy_error", 'the policy service answered 200 without "allow": true'
            )
        if status == 403 and _caller_refused(payload):
            # Not a decision about the user: the policy did not take this service's own
            # credential (issue 14 caller_auth), so no request can pass. Fail closed, tell the
            # operator which settings to look at.
            self._result("caller_refused", started)
            log.error(
                "policy service at %s refused this service's caller credential: %s; check "
                "ext_authz.policy_caller_secret_file / _env and policy_caller_header against the "
                "policy service's caller_auth",
                self.url,
                _reason(payload, "no reason given"),
            )
            return self._unavailable(
                "policy_caller_refused",
                "the policy service refused the gateway's caller credential (a deployment "
                "problem: ext_authz.policy_caller_secret_* / policy_caller_header)",
            )
        if status == 403:
            self._result("deny", started)
            return PolicyAnswer(False, 403, _reason(payload, "denied by policy"), "policy_denied")
        if status == 400:
            self._result("bad_request", started)
            return PolicyAnswer(
                False,
                400,
                _reason(payload, "the policy service refused the request"),
                "bad_request",
            )
        if status == 401:
            # The caller's token was valid here; the policy refusing the exchanged one is a
            # configuration mismatch (e.g. the target realm's issuer is not trusted there).
            self._result("token_refused", started)
            reason = _reason(payload, "no reason given")
            return PolicyAnswer(
                False,
                403,
                f"the policy service refused the exchanged token: {reason}",
                "policy_token_refused",
            )
        self._result("error", started)
        detail = _reason(payload, "no JSON reason")
        log.warning("policy service at %s answered HTTP %s: %s", self.url, status, detail)
        return self._unavailable(
            "policy_error", f"the policy service answered HTTP {status}: {detail}"
        )

    @staticmethod
    def _unavailable(error: str, what: str) -> PolicyAnswer:
        return PolicyAnswer(False, 503, f"{what}; denying (fail closed), retry shortly", error)
