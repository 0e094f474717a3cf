"""/health on SQLite when the disk is full: every write fails, while transactions that only
read (a worker's claims and heartbeats finding nothing) still commit. Those once made
/health answer 200 throughout. A full disk is simulated by capping the database's pages
(``PRAGMA max_page_count``), which SQLite reports as it does a full disk (SQLITE_FULL)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from stepline import errors
from stepline.server import api_metrics, create_app
from stepline.server.common import ServerOptions


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_health_answers_503_while_the_disk_is_full_and_200_once_it_is_not(
    make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_metrics, "WRITES_FAILING", 0.3)
    engine = await make_engine()  # its worker's claims and heartbeats commit all along
    app = create_app(engine, ServerOptions(dev=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        assert (await client.get("/health")).status_code == 200
        pages = await engine.store.db.read(lambda conn: conn.scalar("PRAGMA page_count"))
        await engine.store.db.write(lambda conn: conn.one(f"PRAGMA max_page_count = {int(pages)}"))
        big = {"name": "h/refused", "data": {"blob": "x" * 200_000}}
        for _ in range(3):
            with pytest.raises(errors.StoreError, match="full"):
                await engine.send(big)
            await engine.store.db.write(lambda conn: conn.one("SELECT 1 AS one"))  # reads only: commits
            await asyncio.sleep(0.2)
        reply = await client.get("/health")
        assert reply.status_code == 503 and "no write has gone through" in reply.json()["error"], reply.text
        await engine.store.db.write(lambda conn: conn.one("PRAGMA max_page_count = 1073741823"))
        await engine.send(big)
        assert (await client.get("/health")).status_code == 200
