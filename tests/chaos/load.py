"""A steady event load over HTTP, from a thread: ``POST /e/{event key}`` to the API servers in
turn, recording every event id a response acknowledged.

Each event carries a stable ``id`` (de-duplication), so a batch that got no answer (its
server was killed, the database stalled) is sent again, to the next server, until some
server acknowledges it: a repeat can never start a second run.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from typing import Any

import httpx

from tests.chaos import app as chaos_app


def step_seconds(rng: random.Random) -> list[float]:
    """Durations of the five steps: short, long, a sync step in a thread, short, medium."""
    return [
        round(rng.uniform(0.0, 0.05), 3),
        round(rng.uniform(0.2, 2.0), 3),
        round(rng.uniform(0.2, 1.0), 3),
        round(rng.uniform(0.0, 0.05), 3),
        round(rng.uniform(0.2, 0.8), 3),
    ]


class Load:
    def __init__(
        self, urls: list[str], event_key: str, *, rate: float, seed: int,
        hold: tuple[float, float] | None = None, give_up_after: float = 120.0,
    ) -> None:
        self.urls = urls
        self.hold = hold
        self.event_key = event_key
        self.interval = 1.0 / rate
        self.rng = random.Random(seed)
        self.give_up_after = give_up_after
        self.acknowledged: list[str] = []
        self.unacknowledged: list[str] = []  # external ids never acknowledged (given up on)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="chaos-load", daemon=True)
        self._counter = itertools.count()

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.give_up_after + 30)

    def _main(self) -> None:
        servers = itertools.cycle(self.urls)
        with httpx.Client(timeout=10) as http:
            while not self._stop.is_set():
                batch = [self._event() for _ in range(self.rng.randint(1, 3))]
                self._send(http, servers, batch)
                self._stop.wait(self.interval * len(batch))  # pacing of the load, not a wait for a state

    def _event(self) -> dict[str, Any]:
        n = next(self._counter)
        data: dict[str, Any] = {"n": n, "seconds": step_seconds(self.rng)}
        if self.hold:
            data["hold"] = round(self.rng.uniform(*self.hold), 3)
        return {"name": chaos_app.EVENT, "id": f"chaos-{n}", "data": data}

    def _send(self, http: httpx.Client, servers: Any, batch: list[dict[str, Any]]) -> None:
        deadline = time.monotonic() + self.give_up_after
        while time.monotonic() < deadline:
            url = next(servers)
            try:
                response = http.post(f"{url}/e/{self.event_key}", json=batch)
                if response.status_code == 200:
                    ids = response.json()["ids"]
                    if len(ids) == len(batch):
                        self.acknowledged.extend(ids)
                        return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            self.errors += 1
            time.sleep(0.1)  # a server is down or the database stalled: try the next one soon
        self.unacknowledged.extend(event["id"] for event in batch)
