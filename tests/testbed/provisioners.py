"""Non-Go components fetched into the cache; each registers itself in ``build.EXTRA_PROVISIONERS``."""

from __future__ import annotations
