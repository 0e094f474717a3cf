"""SIMULATED external APIs for the examples: a GitHub-like repository API and a paginated query API.

A real HTTP server on loopback (``stepline.fakes.loopback.LoopbackServer``), so the
examples' steps make real requests and meet real failures:

- ``GET /repos/{owner}/{repo}/commits?page=&per_page=``: commit list, ``Link: rel="next"``
- ``GET /repos/{owner}/{repo}/commits/{sha}``: one commit with its files
- ``GET /queries/{query_id}?page=&pages=``: ``{"items", "has_more", "total_pages"}``

``rate_limit(prefix, times=, reset_in=, after=)`` makes the next matching requests answer
like GitHub's limit (403, ``X-RateLimit-Remaining: 0``, ``X-RateLimit-Reset`` in
epoch seconds) or, under ``/queries``, 429 with ``Retry-After``; ``delay(...)`` slows
them. ``hits`` counts requests per path.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
import threading
import time
from typing import Any

from stepline.fakes.loopback import LoopbackServer, Request

COMMITS_PER_REPO = 12


def _sha(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()


class FakeAPI(LoopbackServer):
    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self._lock = threading.Lock()
        self._faults: list[dict[str, Any]] = []
        self.hits: collections.Counter[str] = collections.Counter()

    def rate_limit(self, prefix: str, *, times: int = 1, reset_in: float = 1.0, after: int = 0) -> None:
        """The next ``times`` requests under ``prefix`` (after ``after`` good ones) are rate-limited."""
        with self._lock:
            self._faults.append({"prefix": prefix, "times": times, "kind": "limit", "seconds": reset_in, "after": after})

    def delay(self, prefix: str, seconds: float, *, times: int = 1) -> None:
        with self._lock:
            self._faults.append({"prefix": prefix, "times": times, "kind": "delay", "seconds": seconds})

    def _fault(self, path: str) -> dict[str, Any] | None:
        with self._lock:
            for fault in self._faults:
                if path.startswith(fault["prefix"]) and fault.get("after", 0) > 0:
                    fault["after"] -= 1
                    continue
                if path.startswith(fault["prefix"]) and fault["times"] > 0:
                    fault["times"] -= 1
                    return dict(fault)
        return None

    async def respond(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        page = request.query.get("page")
        with self._lock:
            self.hits[request.path + (f"?page={page}" if page is not None else "")] += 1
        fault = self._fault(request.path)
        if fault and fault["kind"] == "delay":
            await self.pause(reader, fault["seconds"])
        elif fault:
            if request.path.startswith("/queries"):
                headers = {"retry-after": str(math.ceil(fault["seconds"]))}
                await self.send_json(writer, 429, {"error": "rate limit exceeded, try again later"}, headers)
            else:
                reset = math.ceil(time.time() + fault["seconds"])
                headers = {"x-ratelimit-limit": "60", "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
                await self.send_json(writer, 403, {"message": "API rate limit exceeded"}, headers)
            return
        parts = request.path.strip("/").split("/")
        if len(parts) == 4 and parts[0] == "repos" and parts[3] == "commits":
            await self._commits(request, writer, f"{parts[1]}/{parts[2]}")
        elif len(parts) == 5 and parts[0] == "repos" and parts[3] == "commits":
            await self._commit(writer, f"{parts[1]}/{parts[2]}", parts[4])
        elif len(parts) == 2 and parts[0] == "queries":
            await self._query_page(request, writer, parts[1])
        else:
            await self.send_json(writer, 404, {"message": "Not Found"})

    async def _commits(self, request: Request, writer: asyncio.StreamWriter, repo: str) -> None:
        page = int(request.query.get("page", 1))
        per_page = int(request.query.get("per_page", 5))
        start = (page - 1) * per_page
        items = [
            {"sha": _sha(repo, i), "commit": {"message": f"commit {i} of {repo}", "author": {"date": f"2026-11-{1 + i % 28:02d}T{9 + i % 12:02d}:00:00Z"}}}
            for i in range(start, min(start + per_page, COMMITS_PER_REPO))
        ]
        headers = {}
        if start + per_page < COMMITS_PER_REPO:
            headers["link"] = f'<{self.url}{request.path}?page={page + 1}&per_page={per_page}>; rel="next"'
        await self.send_json(writer, 200, items, headers)

    async def _commit(self, writer: asyncio.StreamWriter, repo: str, sha: str) -> None:
        n = int(sha[:4], 16)
        files = [{"filename": f"src/{['api', 'ui', 'db', 'tests'][(n + k) % 4]}/f{k}.py", "additions": (n >> k) % 40, "deletions": (n >> (k + 2)) % 15} for k in range(1 + n % 3)]
        await self.send_json(writer, 200, {"sha": sha, "files": files})

    async def _query_page(self, request: Request, writer: asyncio.StreamWriter, query_id: str) -> None:
        page = int(request.query.get("page", 0))
        pages = int(request.query.get("pages", 3))
        items = [{"query": query_id, "page": page, "n": i} for i in range(3)]
        await self.send_json(writer, 200, {"page": page, "items": items, "has_more": page + 1 < pages, "total_pages": pages})


_shared: FakeAPI | None = None
_shared_lock = threading.Lock()


def shared_url() -> str:
    """The URL of a process-wide SIMULATED API, started on first use (for ``stepline dev``)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = FakeAPI()
            _shared.start()
        return _shared.url
