"""The README's own code, run as a newcomer would copy it: `jobs.py` ("Your own functions")
and the test under "Testing your functions", in a directory of their own, with pytest in
its default (strict) asyncio mode."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readmes_jobs_and_its_test_run_as_written(tmp_path: pathlib.Path) -> None:
    blocks = python_blocks()
    (jobs,) = [b for b in blocks if b.startswith("# jobs.py")]
    (test,) = [b for b in blocks if "TestEngine(app)" in b]
    (tmp_path / "jobs.py").write_text(jobs)
    (tmp_path / "test_readme.py").write_text(test)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=strict", "test_readme.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr


def test_the_readmes_function_declarations_are_accepted() -> None:
    """The LLM and flow-control blocks declare functions with options a newcomer copies: each
    must still be accepted as written (a renamed option or a positional argument fails here)."""
    import stepline

    blocks = [b for b in python_blocks() if b.startswith("@app.function(")]
    assert len(blocks) == 2, blocks
    for block in blocks:
        if "def " not in block:  # the flow-control block shows the decorator alone
            block += "async def declared(ctx: stepline.Context) -> None: ...\n"
        app = stepline.App("readme")
        exec(compile(block, "README.md", "exec"), {"stepline": stepline, "app": app})
        assert len(app.functions) == 1
