"""Kubernetes resource quantities (``resource.Quantity`` text) as numbers, and CPU / memory
figures written the way ``kubectl top`` writes them."""

from __future__ import annotations

import math
import re
from decimal import Decimal

# Quantity suffixes of the metrics API's figures (k8s.io/apimachinery resource.Quantity).
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>[eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE]?)"
)
_SCALE = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{f"{p}i": Decimal(1024**i) for i, p in enumerate("KMGTPE", start=1)},
}


def parse_quantity(value: object) -> Decimal | None:
    """A Kubernetes quantity ('250m', '549707864n', '64Mi', '1e3') as a number; None if invalid."""
    match = _QUANTITY.fullmatch(str(value).strip())
    if match is None:
        return None
    suffix = match["suffix"]
    try:
        number = Decimal(match["number"])
        if suffix[:1] in ("e", "E") and len(suffix) > 1:
            number *= Decimal(10) ** int(suffix[1:])
        else:
            number *= _SCALE[suffix]
    except (ArithmeticError, KeyError, ValueError):  # decimal errors are ArithmeticErrors
        return None
    # beyond any real usage (and beyond what int() may print): show the raw value instead
    return number if number.is_finite() and number.adjusted() < 30 else None


def cpu_text(value: object) -> str:
    """CPU as ``kubectl top`` prints it: millicores, rounded up ('549707864n' -> '550m')."""
    cores = parse_quantity(value)
    return str(value) if cores is None else f"{math.ceil(cores * 1000)}m"


def memory_text(value: object) -> str:
    """Memory as ``kubectl top`` prints it: whole MiB, rounded down ('67108864' -> '64Mi')."""
    size = parse_quantity(value)
    return str(value) if size is None else f"{math.ceil(size) // 2**20}Mi"
