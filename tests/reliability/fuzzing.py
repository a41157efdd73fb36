"""What the property-based tests of the request parsers share: the input strategies (JSON values,
header text, look-alikes of a denied namespace), the example budgets, deeply nested documents,
and the checks every HTTP answer must pass (within a time bound, non-5xx JSON).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import aiohttp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

DEEP_JSON = b'{"params":{"arguments":' + b"[" * 5000 + b"]" * 5000 + b"}}"
DEEP_YAML = "a: " + "[" * 5000 + "]" * 5000 + "\n"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=25,
)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300)
# Issue 14 item 5: look-alikes of a denied namespace (what re.match with "$" let through: a final
# newline), built around "kube-system" with a few characters of any kind on either side.
LOOKALIKE_EXAMPLES = ("kube-system\n", "kube-system\r\n", "\nkube-system", "kube-system\u2028",
                      "kube\u2011system", "kube-system\u200b", "\uff4bube-system")  # fmt: skip
namespace_lookalikes = st.one_of(
    st.builds(lambda a, b: a + "kube-system" + b, st.text(max_size=2), st.text(max_size=2)),
    st.text(max_size=70),
)
# An independent statement of a Kubernetes namespace name (RFC 1123 label), for the oracles.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def is_label(value: str) -> bool:
    return _LABEL.fullmatch(value) is not None


PURE = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
HTTP = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


async def bounded_answer(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, str, str]:
    started = time.monotonic()
    async with http.request(method, url, **kwargs) as resp:
        text = await resp.text()
        result = resp.status, text, resp.content_type
    assert time.monotonic() - started < 15, (url, kwargs)
    return result


def assert_json_non_5xx(status: int, text: str, ctype: str, what: Any) -> None:
    assert status < 500, (status, text[:300], what)
    assert ctype == "application/json", (status, ctype, text[:200], what)
    json.loads(text)
