"""A FastAPI app with Stepline inside it (``stepline.integrations.fastapi``): its functions,
a worker that runs them in the app's own process, a route that starts a job, and the
job-status routes a page polls or subscribes to.

    pip install 'stepline[fastapi]'
    uvicorn fastapi_app:app --port 8000                 # from docs/examples: SQLite under .stepline/
    STEPLINE_URL=http://127.0.0.1:8288 STEPLINE_API_TOKEN=... uvicorn fastapi_app:app   # a Stepline server instead

With ``STEPLINE_URL`` the app only sends and reads; run the functions in a worker
(``stepline worker fastapi_app:jobs --db ...``) or ``stepline dev fastapi_app:jobs``.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

import stepline
from stepline.integrations import jobs as jobs_pattern
from stepline.integrations.fastapi import Stepline, get_stepline, job_router, stepline_lifespan

jobs = stepline.App("fastapi-example")


@jobs.function(id="summarise", trigger=stepline.TriggerEvent("doc/summarise"), retries=2)
async def summarise(ctx: stepline.Context) -> dict[str, Any]:
    text = str(ctx.event.data.get("text", ""))
    await ctx.set_progress(20, "counting")
    words = await ctx.step.run("count-words", lambda: len(text.split()))
    await ctx.set_progress(60, "summarising")
    summary = await ctx.step.run("summarise", lambda: " ".join(text.split()[:8]))
    await ctx.set_progress(100, "done")
    return {"words": words, "summary": summary, "user_id": ctx.event.data.get("user_id")}


class Doc(BaseModel):
    text: str


def current_user(request: Any) -> str:
    return "u-demo"  # in a real app: the signed-in user, from the session


def create_app(**options: Any) -> FastAPI:
    """``options``: ``stepline_lifespan``'s (``url=``, ``db=``, ``event_key=``, ``api_token=`` ...)."""
    options.setdefault("url", os.environ.get("STEPLINE_URL") or None)
    app = FastAPI(title="Stepline in FastAPI", lifespan=stepline_lifespan(apps=[jobs], **options))
    # POST /jobs {"name": "doc/summarise", "data": {...}}, GET /jobs/{id}?token=, GET /jobs/{id}/stream?token=
    app.include_router(job_router("/jobs", events=["doc/summarise"], user_id=current_user))

    @app.post("/summarise")
    async def start(body: Doc, sl: Stepline = Depends(get_stepline)) -> dict[str, Any]:
        """The app's own route: sends the event, answers with the job the page follows."""
        return await sl.start_job({"name": "doc/summarise", "data": {"text": body.text, "user_id": "u-demo"}})

    @app.post("/events/{name:path}")
    async def send(name: str, data: dict[str, Any], sl: Stepline = Depends(get_stepline)) -> dict[str, Any]:
        """Fire and forget: the event ids once they are stored."""
        return {"ids": await sl.send({"name": name, "data": data})}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    return app


PAGE = """<!doctype html><meta charset=utf-8><title>Summarise</title>
<form id=f><input id=t size=60 value="Durable steps make long jobs safe to run"> <button>Summarise</button></form>
<progress id=bar max=100 value=0></progress> <span id=msg></span><pre id=out></pre>
<script>""" + jobs_pattern.PAGE_SCRIPT + """
document.getElementById("f").onsubmit = async (e) => {
  e.preventDefault();
  const job = await (await fetch("/summarise", {method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({text: document.getElementById("t").value})})).json();
  followJob(job, (s) => {
    document.getElementById("bar").value = s.progress || 0;
    document.getElementById("msg").textContent = s.status + " " + (s.progress_message || "");
    if (s.status === "completed") document.getElementById("out").textContent = JSON.stringify(s.output, null, 2);
    if (s.error) document.getElementById("out").textContent = s.error;
  });
};
</script>"""

app = create_app()
