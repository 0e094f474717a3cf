"""Back-off for wrong event keys and API tokens, per client and for all clients together.

A client (its address as the server sees it) may send ``free`` wrong values of a secret;
from then on each failure makes it wait before its next attempt is even checked: 1 s
after the ``free``-th, then 2 s, 4 s ... up to 15 min. A right value resets it.

Every local client is 127.0.0.1, and X-Forwarded-For is believed from there, so a
guesser could pose as any number of clients. A bucket shared by all clients therefore
holds ``per_minute`` failures and refills at that rate; while it is empty, no attempt
at that secret is checked (the right value included, or the answer would tell a
guesser when it has found it) until it refills. Clients that sent the right value in
the last ``TRUSTED_FOR`` seconds are not held back by it: otherwise anyone could stop
every sender and the dashboard by sending wrong values under made-up addresses. They
still meet their own back-off, and only the secret makes a client trusted.

Every client behind one proxy (or on one host) is one address, so a stranger sending
wrong values could hold the right one back too, for up to 15 min. A strong secret
(``STRONG_LENGTH`` characters or more: 128 bits and up from ``openssl rand -hex 16``) is
therefore checked even while its client waits, and let in when right: telling a guesser
that it found such a secret costs nothing, since no guesser finds it. Wrong values still
wait. A shorter secret keeps the whole back-off, and `stepline start` warns about it.

Each secret (the event key; the API token, typed at /login or sent as a bearer; the SDK
apps' signing key) has its own clients and bucket. The state lives in each server process: N processes behind
one address allow N times the attempts.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable

BASE_DELAY = 1.0
MAX_DELAY = 15 * 60.0
MAX_CLIENTS = 10_000  # clients remembered per secret; the oldest are forgotten first
TRUSTED_FOR = 15 * 60.0  # seconds after a right value during which the shared bucket does not hold a client
STRONG_LENGTH = 32  # characters from which a secret is let in even while its client waits


def is_strong(secret: str) -> bool:
    return len(secret.strip()) >= STRONG_LENGTH


@dataclasses.dataclass
class _Client:
    failures: int = 0
    blocked_until: float = 0.0


@dataclasses.dataclass
class _Bucket:
    tokens: float
    at: float


@dataclasses.dataclass(frozen=True)
class Wait:
    seconds: float
    why: str


class AuthLimiter:
    def __init__(self, free: int = 5, per_minute: int = 100, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.free = max(1, free)
        self.per_minute = max(1, per_minute)
        self._clock = clock
        self._clients: dict[str, OrderedDict[str, _Client]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._trusted: dict[str, OrderedDict[str, float]] = {}  # secret -> client -> trusted until

    def wait(self, secret: str, client: str) -> Wait | None:
        """How long ``client`` must wait before an attempt at ``secret`` is checked; None: check it now."""
        now = self._clock()
        bucket = self._bucket(secret, now)
        if bucket.tokens < 1 and not self._is_trusted(secret, client, now):
            seconds = (1 - bucket.tokens) * 60.0 / self.per_minute
            return Wait(seconds, f"too many wrong values of the {secret} from all clients "
                                 f"(over {self.per_minute} a minute, STEPLINE_AUTH_GLOBAL_FAILURES)")
        clients = self._clients.get(secret)
        known = clients.get(client) if clients is not None else None
        if known is not None and known.blocked_until > now:
            return Wait(known.blocked_until - now, f"{known.failures} wrong values of the {secret} from {client} "
                                                   f"(back-off after {self.free}, STEPLINE_AUTH_FAILURES)")
        return None

    def failed(self, secret: str, client: str) -> None:
        now = self._clock()
        self._bucket(secret, now).tokens -= 1
        clients = self._clients.setdefault(secret, OrderedDict())
        known = clients.pop(client, None) or _Client()
        clients[client] = known
        if len(clients) > MAX_CLIENTS:
            clients.popitem(last=False)
        known.failures += 1
        if known.failures >= self.free:
            known.blocked_until = now + min(MAX_DELAY, BASE_DELAY * 2 ** min(known.failures - self.free, 20))

    def succeeded(self, secret: str, client: str, *, clear_back_off: bool = True) -> None:
        """A right value from ``client``; ``clear_back_off`` False keeps its back-off for the
        wrong values others send from the same address (a strong secret let in while it waits)."""
        clients = self._clients.get(secret)
        if clients and clear_back_off:
            clients.pop(client, None)
        trusted = self._trusted.setdefault(secret, OrderedDict())
        trusted.pop(client, None)
        trusted[client] = self._clock() + TRUSTED_FOR
        if len(trusted) > MAX_CLIENTS:
            trusted.popitem(last=False)

    def _is_trusted(self, secret: str, client: str, now: float) -> bool:
        trusted = self._trusted.get(secret)
        until = trusted.get(client) if trusted is not None else None
        return until is not None and until > now

    def _bucket(self, secret: str, now: float) -> _Bucket:
        bucket = self._buckets.get(secret)
        if bucket is None:
            bucket = self._buckets[secret] = _Bucket(float(self.per_minute), now)
        bucket.tokens = min(float(self.per_minute), bucket.tokens + (now - bucket.at) * self.per_minute / 60.0)
        bucket.at = now
        return bucket
