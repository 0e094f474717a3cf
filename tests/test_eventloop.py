"""The loop Stepline's own commands run on: uvloop by default, the standard one on request."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import warnings

import pytest

from stepline import errors, eventloop, settings
from tests.test_crash import REPO


async def running_kind() -> str:
    await asyncio.sleep(0)
    return eventloop.kind()


def test_auto_runs_on_uvloop_where_it_is_installed() -> None:
    assert eventloop.run(running_kind(), "auto") == "uvloop"
    assert eventloop.run(running_kind(), "uvloop") == "uvloop"


def test_asyncio_keeps_the_standard_loop() -> None:
    assert eventloop.run(running_kind(), "asyncio") == "asyncio"


def test_an_unknown_loop_names_the_variable_and_the_choices() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the refused coroutine is closed, never left un-awaited
        with pytest.raises(errors.ConfigError, match=r"STEPLINE_LOOP='trio': expected one of auto, uvloop, asyncio"):
            eventloop.run(running_kind(), "trio")


def test_the_setting_comes_from_the_environment() -> None:
    assert settings.from_env({}).loop == "auto"
    assert settings.from_env({"STEPLINE_LOOP": "asyncio"}).loop == "asyncio"


@pytest.mark.timeout(60)
def test_a_worker_process_says_which_loop_it_runs_on(tmp_path) -> None:
    db = str(tmp_path / "loop.db")
    subprocess.run([sys.executable, "-m", "stepline.cli", "migrate", "--db", db], cwd=REPO, check=True, capture_output=True)
    for choice, expected in (("auto", "loop: uvloop"), ("asyncio", "loop: asyncio")):
        env = {**os.environ, "PYTHONPATH": REPO, "STEPLINE_LOOP": choice, "STEPLINE_LOG_LEVEL": "WARNING"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepline.cli", "worker", "tests.apps_crash:app", "--db", db],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
        finally:
            proc.terminate()
            proc.wait(10)
        assert line.startswith("stepline worker w-") and line.rstrip().endswith(expected), line
