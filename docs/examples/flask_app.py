"""A Flask app that hands long work to Stepline (``stepline.integrations.flask``): a route
that sends an event, a route that starts a job, and the job-status routes a page polls or
subscribes to.

    pip install 'stepline[flask]'
    flask --app flask_app run                       # from docs/examples: a worker in the app, SQLite under .stepline/
    STEPLINE_URL=http://127.0.0.1:8288 STEPLINE_API_TOKEN=... flask --app flask_app run   # a Stepline server instead
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, request

import stepline
from stepline.integrations import jobs as jobs_pattern
from stepline.integrations.flask import Stepline

jobs = stepline.App("flask-example")


@jobs.function(id="summarise", trigger=stepline.TriggerEvent("doc/summarise"), retries=2)
def summarise(ctx: stepline.Context) -> dict[str, Any]:  # sync functions run in a thread
    text = str(ctx.event.data.get("text", ""))
    ctx.set_progress(30, "counting")
    words = ctx.step.run("count-words", lambda: len(text.split()))
    ctx.set_progress(100, "done")
    return {"words": words, "summary": " ".join(text.split()[:8]), "user_id": ctx.event.data.get("user_id")}


@jobs.function(id="audit", trigger=stepline.TriggerEvent("doc/viewed"))
def audit(ctx: stepline.Context) -> str:
    return f"viewed {ctx.event.data.get('doc_id')}"


def current_user() -> str:
    return "u-demo"  # in a real app: the signed-in user, from the session


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    url = os.environ.get("STEPLINE_URL")
    app.config["STEPLINE"] = config or (
        {"URL": url, "API_TOKEN": os.environ.get("STEPLINE_API_TOKEN", ""), "RUN_WORKER": False} if url
        else {"APPS": [jobs], "DB": os.environ.get("STEPLINE_DB", ".stepline/flask-example.db")}
    )
    sl = Stepline(app)
    # POST /jobs {"name": "doc/summarise", "data": {...}}, GET /jobs/<id>?token=, GET /jobs/<id>/stream?token=
    app.register_blueprint(sl.job_blueprint("/jobs", events=["doc/summarise"], user_id=current_user))

    @app.post("/summarise")
    def start() -> Any:
        text = (request.get_json(silent=True) or {}).get("text", "")
        return jsonify(sl.start_job({"name": "doc/summarise", "data": {"text": text, "user_id": current_user()}}))

    @app.post("/docs/<doc_id>/viewed")
    def viewed(doc_id: str) -> Any:
        return jsonify({"ids": sl.send({"name": "doc/viewed", "data": {"doc_id": doc_id}})})

    @app.get("/")
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
  });
};
</script>"""
