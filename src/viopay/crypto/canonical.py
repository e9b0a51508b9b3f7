"""Canonical JSON (RFC 8785, JCS) for fingerprints (§4.5)."""

from typing import Any, cast

import rfc8785


def canonical_json(value: object) -> bytes:
    """Serialize per RFC 8785. ValueError for what JCS cannot represent (an integer beyond
    ±(2**53 - 1), NaN or infinity, a non-string key, a lone surrogate, another type)."""
    try:
        return rfc8785.dumps(cast(Any, value))
    except rfc8785.CanonicalizationError as exc:
        # rfc8785's own messages echo the offending value, which may be plaintext.
        raise ValueError(f"value cannot be canonicalized: {type(exc).__name__}") from None
