"""Short-lived HMAC-signed tokens for one run's status in a browser, and dashboard session ids.

A run token lets a web page read one run (``GET /api/v1/runs/{id}`` and its
``/stream``) without ever seeing the API token. The app's backend mints it right
after sending the event and hands it to the page with the job id::

    from stepline.server import mint_run_token

    token = mint_run_token(run_id, key=os.environ["STEPLINE_SIGNING_KEY"], ttl=900)

The server checks it with the same key (``STEPLINE_SIGNING_KEY``, else the API token).
Tokens are ``slr1.<run id>.<expiry, epoch seconds>.<signature>``; the signed text
names what the token is for. A dashboard session is not signed but stored: its cookie
holds a random id whose hash the database keeps until logout or expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

PREFIX = "slr1"
DEFAULT_TTL = 900.0  # seconds: long enough for a slow LLM job, short enough to leak little
SESSION_TTL = 12 * 3600.0
SESSION_PREFIX = "sls2"


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


def new_session_id() -> str:
    """The dashboard's login cookie: a random id (256 bits) the server keeps only a hash of."""
    return f"{SESSION_PREFIX}.{secrets.token_urlsafe(32)}"


def session_hash(cookie: str, key: str) -> str | None:
    """What the server stores for a session cookie, keyed so that a new API token or
    signing key ends every session; None for a value that is not a session cookie."""
    prefix, _, secret = cookie.partition(".")
    if prefix != SESSION_PREFIX or not 40 <= len(secret) <= 64:
        return None
    return hmac.new(key.encode(), f"session:{secret}".encode(), hashlib.sha256).hexdigest()
