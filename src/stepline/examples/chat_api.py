"""The chat example's web side (FastAPI): ask, poll, cancel.

    uvicorn stepline.examples.chat_api:api --port 8000      # next to `stepline dev`

With no LLM provider configured in its own environment, it calls the SIMULATED models of
the `stepline dev` at STEPLINE_URL (default http://127.0.0.1:8288), which shares their
address at ``/api/v1/dev/models``; with a provider key set (OPENROUTER_API_KEY, ...), set
the same one here, since quick models are answered in this process.

``POST /chat`` answers quick models inline and returns ``{"job_id", "status":
"pending"}`` for queued ones; ``GET /chat/jobs/{job_id}`` is what the page polls;
``POST /chat/jobs/{job_id}/cancel`` sends ``llm/generate.cancel``. Live tokens are
on the run's stream (``/api/v1/runs/{run_id}/stream`` on the Stepline server).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

import stepline
from stepline.examples import chat, jobs
from stepline.llm import Router, providers


class Ask(BaseModel):
    user_id: str
    model: str = "fake-quick"
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None


def create_api(router: Router, sender: Any, prepare: Callable[[], Awaitable[None]] | None = None) -> FastAPI:
    """The routes, over a ``Router`` and an event sender (a running App or a stepline.AsyncClient);
    ``prepare`` runs before each ask (finding the dev server's models)."""
    api = FastAPI(title="Stepline chat example")

    @api.post("/chat")
    async def ask(body: Ask) -> dict[str, Any]:
        if prepare is not None:
            await prepare()
        messages = body.messages or [{"role": "user", "content": body.prompt or ""}]
        job_id = uuid.uuid4().hex
        jobs.upsert(job_id, kind="chat", user_id=body.user_id, status="pending", input={"model": body.model, "messages": messages})
        try:
            result = await router.generate(user_id=body.user_id, model=body.model, messages=messages, job_id=job_id)
        except stepline.SteplineError as exc:
            jobs.upsert(job_id, status="failed", error=str(exc))
            raise HTTPException(status_code=502, detail=str(exc)) from exc
        if result["status"] == "completed":
            jobs.upsert(job_id, status="completed", progress=100, output={"text": result["text"], "model": result["model"]},
                        prompt_tokens=result["usage"]["prompt_tokens"], completion_tokens=result["usage"]["completion_tokens"],
                        cost_usd=result["cost_usd"])
            return {**result, "job_id": job_id}
        return result

    @api.get("/chat/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        found = jobs.get(job_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return found

    @api.post("/chat/jobs/{job_id}/cancel")
    async def cancel(job_id: str) -> dict[str, Any]:
        found = jobs.get(job_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        if found["status"] in jobs.FINAL:
            return {"job_id": job_id, "status": found["status"]}
        # The run's cancellation marks the job (chat.mark_cancelled, on stepline/function.cancelled).
        await sender.send({"name": "llm/generate.cancel", "data": {"job_id": job_id}})
        return {"job_id": job_id, "status": "cancelling"}

    @api.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    return api


def dev_models_finder(stepline_url: str) -> Callable[[], Awaitable[None]]:
    """With no provider configured in this process, point ``stepline.llm`` at the SIMULATED
    models that the `stepline dev` at ``stepline_url`` serves (once it answers)."""

    async def find() -> None:
        configured, _ = providers.from_env(os.environ)
        if configured:
            return
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                answer = await http.get(f"{stepline_url}/api/v1/dev/models")
        except httpx.HTTPError:
            return  # not up (yet): the call reports that no provider is configured
        if answer.status_code == 200 and answer.json().get("simulated"):
            os.environ.update(answer.json()["env"])  # stepline.llm reads it (as `stepline dev` does its own)

    return find


def _default_api() -> FastAPI:
    url = os.environ.get("STEPLINE_URL", "http://127.0.0.1:8288")
    # The API token lets the Router's quick calls be held to the server's budgets (not needed by `stepline dev`).
    client = stepline.AsyncClient(
        url, os.environ.get("STEPLINE_EVENT_KEY", "dev"), api_token=os.environ.get("STEPLINE_API_TOKEN") or None
    )
    return create_api(chat.make_router(client), client, prepare=dev_models_finder(url))


PAGE = """<!doctype html><meta charset=utf-8><title>Stepline chat</title>
<form id=f><select id=m><option>fake-quick<option>fake-slow</select> <input id=p size=60 value="Tell me about durable steps">
<button>Ask</button> <button type=button id=c disabled>Cancel</button></form><pre id=o></pre>
<script>
let job=null;const o=document.getElementById('o'),c=document.getElementById('c');
document.getElementById('f').onsubmit=async e=>{e.preventDefault();o.textContent='...';
 const r=await (await fetch('/chat',{method:'POST',headers:{'content-type':'application/json'},
  body:JSON.stringify({user_id:'demo',model:m.value,prompt:p.value})})).json();
 if(r.status==='completed'){o.textContent=r.text;return}
 job=r.job_id;c.disabled=false;poll()};
c.onclick=async()=>{await fetch('/chat/jobs/'+job+'/cancel',{method:'POST'})};
async function poll(){const j=await (await fetch('/chat/jobs/'+job)).json();
 o.textContent=j.status+(j.output?'\\n'+j.output.text:'')+(j.error?'\\n'+j.error:'');
 if(['completed','failed','cancelled'].includes(j.status)){c.disabled=true;return}setTimeout(poll,1000)}
</script>"""

api = _default_api()
