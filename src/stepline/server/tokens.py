"""Short-lived HMAC-signed tokens: one run's status for a browser, and the dashboard session.

A run token lets a web page read one run (``GET /api/v1/runs/{id}`` and its
``/stream``) without ever seeing the API token. The app's backend mints it right
after sending the event and hands it to the page with the job id::

    from stepline.server import mint_run_token

    token = mint_run_token(run_id, key=os.environ["STEPLINE_SIGNING_KEY"], ttl=900)

The server checks it with the same key (``STEPLINE_SIGNING_KEY``, else the API token).
Tokens are ``slr1.<run id>.<expiry, epoch seconds>.<signature>``; the signed text
names what the token is for, so a dashboard session is never a run token and the
reverse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

PREFIX = "slr1"
DEFAULT_TTL = 900.0  # seconds: long enough for a slow LLM job, short enough to leak little
SESSION_TTL = 12 * 3600.0


def _sign(key: str, text: str) -> str:
    digest = hmac.new(key.encode(), text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def mint_run_token(run_id: str, key: str, *, ttl: float = DEFAULT_TTL, now: float | None = None) -> str:
    """A token that reads run ``run_id`` (and nothing else) for ``ttl`` seconds."""
    if not key:
        raise ValueError("a signing key is required to mint run tokens (STEPLINE_SIGNING_KEY)")
    if "." in run_id or not run_id:
        raise ValueError(f"not a run id: {run_id!r}")
    expires = int((time.time() if now is None else now) + ttl)
    return f"{PREFIX}.{run_id}.{expires}.{_sign(key, f'run:{run_id}:{expires}')}"


def token_expiry(token: str) -> int | None:
    parts = token.split(".")
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    return int(parts[2])


def verify_run_token(token: str, run_id: str, key: str, *, now: float | None = None) -> bool:
    """True when ``token`` was minted with ``key`` for ``run_id`` and has not expired."""
    parts = token.split(".")
    if not key or len(parts) != 4 or parts[0] != PREFIX or not parts[2].isdigit():
        return False
    _, token_run, expires, signature = parts
    expected = _sign(key, f"run:{token_run}:{expires}")
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return False
    if not hmac.compare_digest(token_run.encode(), run_id.encode()):
        return False
    return int(expires) > (time.time() if now is None else now)


def mint_session(key: str, *, ttl: float = SESSION_TTL, now: float | None = None) -> str:
    """The dashboard's login cookie: proof the API token was typed, without storing it."""
    expires = int((time.time() if now is None else now) + ttl)
    return f"sls1.{expires}.{_sign(key, f'session:{expires}')}"


def verify_session(value: str, key: str, *, now: float | None = None) -> bool:
    parts = value.split(".")
    if not key or len(parts) != 3 or parts[0] != "sls1" or not parts[1].isdigit():
        return False
    expected = _sign(key, f"session:{parts[1]}")
    if not hmac.compare_digest(parts[2].encode(), expected.encode()):
        return False
    return int(parts[1]) > (time.time() if now is None else now)
