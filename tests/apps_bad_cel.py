"""An app whose trigger's CEL expression does not compile, for the start-up error tests
(imported only by `stepline` subprocesses)."""

from __future__ import annotations

import stepline

app = stepline.App("bad-cel")


@app.function(id="picky", trigger=stepline.TriggerEvent("bad/cel", if_="event.data.ok == == true"))
async def picky(ctx: stepline.Context) -> str:
    return "never"
