"""Request signing shared with the SDKs: canonical JSON, HMAC-SHA256, key hashing.

The SDKs re-canonicalize (RFC 8785) the body they receive before checking its
signature, so what we sign and send must already be canonical.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time
from typing import Any

_PREFIX = re.compile(r"^signkey-\w+-")
MAX_SKEW_SECONDS = 300


def _number(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError("JSON cannot hold NaN or infinity")
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    return json.dumps(value)  # repr-style shortest round-trip, as ECMAScript prints it for common values


def canonical(value: Any) -> str:
    """RFC 8785 (JCS) text: sorted keys (by UTF-16 code units), no spaces, ES numbers."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: str(kv[0]).encode("utf-16-be"))
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=False) + ":" + canonical(v) for k, v in items) + "}"
    raise TypeError(f"cannot put {type(value).__name__} in JSON")


def canonical_bytes(value: Any) -> bytes:
    return canonical(value).encode("utf-8")


def key_material(signing_key: str) -> bytes:
    """The HMAC key: the signing key's text after its ``signkey-<env>-`` prefix (not hex-decoded)."""
    return _PREFIX.sub("", signing_key.strip()).encode("utf-8")


def sign(body: bytes, signing_key: str, at: int | None = None) -> str:
    """The ``X-Inngest-Signature`` value for ``body``."""
    t = str(int(time.time()) if at is None else at)
    mac = hmac.new(key_material(signing_key), body + t.encode(), hashlib.sha256).hexdigest()
    return f"t={t}&s={mac}"


def verify(body: bytes, header: str | None, keys: list[str], *, now: float | None = None) -> bool:
    """Whether ``header`` signs ``body`` with one of ``keys`` within five minutes."""
    if not header:
        return False
    parts = dict(p.split("=", 1) for p in header.split("&") if "=" in p)
    t, s = parts.get("t", ""), parts.get("s", "")
    if not t.isdigit() or abs((now or time.time()) - int(t)) > MAX_SKEW_SECONDS:
        return False
    for key in keys:
        if key and hmac.compare_digest(sign(body, key, int(t)).split("&s=", 1)[1], s):
            return True
    return False


def hashed_key(signing_key: str) -> str:
    """What the SDKs send as ``Authorization: Bearer``: sha256 of the hex-decoded key."""
    raw = _PREFIX.sub("", signing_key.strip())
    try:
        material = bytes.fromhex(raw)
    except ValueError:
        material = raw.encode()
    return hashlib.sha256(material).hexdigest()


def bearer_matches(header: str | None, keys: list[str]) -> bool:
    """Accept the raw key or its hash, with or without the ``signkey-<env>-`` prefix."""
    if not header or not header.lower().startswith("bearer "):
        return False
    token = _PREFIX.sub("", header[7:].strip())
    for key in keys:
        if not key:
            continue
        for candidate in (_PREFIX.sub("", key.strip()), hashed_key(key)):
            if hmac.compare_digest(token.encode(), candidate.encode()):
                return True
    return False
