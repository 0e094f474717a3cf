"""Serve the Python test app (``py_app``) on ``PORT`` with uvicorn, in a process of its own,
under whichever ``inngest`` the interpreter has (the suite runs the newest release this
way, from a venv of its own)."""

from __future__ import annotations

import os
import sys

import uvicorn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.inngest_apps import py_app  # noqa: E402 - the repository root is put on the path first

app = py_app.build(py_app.Recorder())  # with GET /counts and POST /gate/<name>


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
