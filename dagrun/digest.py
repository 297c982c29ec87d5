"""The digest every key, result and manifest check uses: blake3, cut to DIGEST_BYTES.

At the bottom of the house: imports nothing of dagrun, and blake3 only on the
first digest, so any module may use it without drawing a circle.
"""

from __future__ import annotations

from typing import Any

DIGEST_BYTES = 16

_blake3: Any = None


def _hasher() -> Any:
    global _blake3
    if _blake3 is None:
        from blake3 import blake3

        _blake3 = blake3
    return _blake3()


def digest_bytes(*chunks: bytes) -> str:
    h = _hasher()
    for c in chunks:
        h.update(c)
    return str(h.hexdigest(length=DIGEST_BYTES))
