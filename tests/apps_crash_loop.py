"""An app whose steps end their worker process, for the crash-loop tests."""

from __future__ import annotations

import os

import stepline

app = stepline.App("crashloop")


def _die() -> None:
    os._exit(17)  # as a step that exhausts memory or segfaults ends its process


def _die_once(marker: str) -> str:
    """Ends the process the first time (per marker file), then succeeds."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        _die()
    return marker


@app.function(id="poison", trigger=stepline.TriggerEvent("loop/poison"), retries=2)
def poison(ctx: stepline.SyncContext) -> str:
    ctx.step.run("fine", lambda: "ok")
    ctx.step.run("kills", _die)
    return "never"


@app.function(id="bumpy", trigger=stepline.TriggerEvent("loop/bumpy"), retries=0)
def bumpy(ctx: stepline.SyncContext) -> list[str]:
    """Each of its steps ends one worker, once: a deploy's worth of crashes, with progress between."""
    return [ctx.step.run(f"s{i}", _die_once, f"{ctx.event.data['dir']}/s{i}") for i in range(5)]
