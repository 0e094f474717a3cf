"""Job status for browsers, safely: the app's route sends the event and hands the page
a job id and a short-lived run token; the page polls or subscribes to Stepline with it.

    STEPLINE_URL=http://127.0.0.1:8288 STEPLINE_EVENT_KEY=... STEPLINE_API_TOKEN=... \\
        uvicorn fastapi_job_status:app --port 8000

The API token and the signing key stay on the server; the page only ever holds a token
that reads one run for a few minutes.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

import stepline
from stepline.server import mint_run_token


class GenerateRequest(BaseModel):
    prompt: str


def create_app(
    stepline_url: str = os.environ.get("STEPLINE_URL", "http://127.0.0.1:8288"),
    event_key: str = os.environ.get("STEPLINE_EVENT_KEY", "dev"),
    api_token: str = os.environ.get("STEPLINE_API_TOKEN", ""),
    signing_key: str = os.environ.get("STEPLINE_SIGNING_KEY", "") or os.environ.get("STEPLINE_API_TOKEN", ""),
    event_name: str = "llm/generate.requested",
) -> FastAPI:
    app = FastAPI(title="job status example")
    events = stepline.AsyncClient(stepline_url, event_key)
    admin = httpx.AsyncClient(
        base_url=stepline_url, headers={"authorization": f"Bearer {api_token}"} if api_token else {}, timeout=10
    )

    @app.post("/generate")
    async def generate(body: GenerateRequest) -> dict[str, Any]:
        user_id = "u-demo"  # in a real app: the signed-in user, from the session
        [event_id] = await events.send({"name": event_name, "data": {"user_id": user_id, "prompt": body.prompt}})
        # The runs an event starts commit with the event, so they are there at once.
        detail = (await admin.get(f"/api/v1/events/{event_id}")).json()
        if not detail.get("runs"):
            raise HTTPException(status_code=409, detail=f"no job started: {detail.get('why_no_runs')}")
        run_id = detail["runs"][0]["id"]
        if signing_key:  # the key the server signs with: mint here, no round trip
            token = mint_run_token(run_id, key=signing_key, ttl=900)
        else:  # `stepline dev` signs with a key of its own: ask it
            token = (await admin.post(f"/api/v1/runs/{run_id}/token", json={"ttl_seconds": 900})).json()["token"]
        return {
            "job_id": run_id,
            "token": token,
            "status_url": f"{stepline_url}/api/v1/runs/{run_id}?token={token}",
            "stream_url": f"{stepline_url}/api/v1/runs/{run_id}/stream?token={token}",
        }

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    return app


# The page: subscribe to the stream (progress, published tokens, the end), or poll
# status_url every 2 s where EventSource is not wanted.
PAGE = """<!doctype html><meta charset=utf-8><title>Generate</title>
<form id=f><input id=p size=50 value="Tell me about durable steps"> <button>Generate</button></form>
<progress id=bar max=100 value=0></progress> <span id=msg></span><pre id=out></pre>
<script>
const bar = document.getElementById("bar"), msg = document.getElementById("msg"), out = document.getElementById("out");
document.getElementById("f").onsubmit = async (e) => {
  e.preventDefault();
  const job = await (await fetch("/generate", {method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({prompt: document.getElementById("p").value})})).json();
  const es = new EventSource(job.stream_url);          // resumes by itself after a dropped connection
  es.addEventListener("status", (ev) => { const s = JSON.parse(ev.data);
    bar.value = s.progress || 0; msg.textContent = s.status + " " + (s.progress_message || ""); });
  es.addEventListener("message", (ev) => { out.textContent += JSON.parse(ev.data).data.delta || ""; });  // ai.infer(stream=True)
  es.addEventListener("end", (ev) => { const s = JSON.parse(ev.data); es.close();
    out.textContent = s.status === "completed" ? JSON.stringify(s.output, null, 2) : "failed: " + s.error.message; });
};
</script>"""

app = create_app()
