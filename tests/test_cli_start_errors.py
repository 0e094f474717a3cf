"""`stepline start`, `dev` and `worker` refuse what they cannot run with one line that names
the problem and the fix, never a traceback: a database that refuses writes, a function
whose CEL expression does not compile."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.cli_server import REPO
from tests.conftest import _pg_admin

COMMANDS = (
    ["start", "tests.server_apps:app"],
    ["dev", "tests.server_apps:app", "--no-discovery", "--no-poll"],
    ["worker", "tests.server_apps:app"],
)


def run_cli(args: list[str], db_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": REPO, "STEPLINE_EVENT_KEY": "ek", "STEPLINE_API_TOKEN": "tok", "STEPLINE_PORT": "0"}
    return subprocess.run(
        [sys.executable, "-m", "stepline.cli", *args, "--db", db_url],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.fixture
def read_only_db(db_url: str) -> Iterator[str]:
    """The test's database, migrated, then made to refuse writes."""
    if db_url.startswith("postgresql://"):
        _pg_admin(f"ALTER DATABASE {db_url.rsplit('/', 1)[1]} SET default_transaction_read_only = on")
        yield db_url
        return
    if os.geteuid() == 0:  # permissions do not stop root; the immutable flag does
        subprocess.run(["chattr", "+i", db_url], check=True)
        yield db_url
        subprocess.run(["chattr", "-i", db_url], check=True)
        return
    os.chmod(db_url, 0o444)
    os.chmod(os.path.dirname(db_url), 0o555)
    yield db_url
    os.chmod(os.path.dirname(db_url), 0o755)
    os.chmod(db_url, 0o644)


def test_a_database_that_refuses_writes_is_named_with_the_fix(read_only_db: str) -> None:
    for args in COMMANDS:
        line = one_line_error(run_cli(args, read_only_db))
        assert "is read-only" in line and "make it writable" in line and "STEPLINE_DB" in line, (args, line)


def test_a_cel_expression_that_does_not_compile_is_named_with_the_fix(db_url: str) -> None:
    for command, *_ in COMMANDS:
        line = one_line_error(run_cli([command, "tests.apps_bad_cel:app"], db_url))
        assert "tests.apps_bad_cel:app" in line and "event.data.ok == == true" in line, line
        assert "fix it in tests.apps_bad_cel" in line, line
