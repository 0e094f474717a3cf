"""`stepline start`, `dev` and `worker` refuse what they cannot run with one line that names
the problem and the fix, never a traceback: a database that refuses writes, a function
whose CEL expression does not compile, a database that does not answer (once
``STEPLINE_CONNECT_WAIT`` has passed; a server that answers "no such database" at once)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator

import pytest

from tests.chaos.proxy import CuttingProxy
from tests.cli_server import REPO
from tests.conftest import PG_ADMIN_URL, _pg_admin

COMMANDS = (
    ["start", "tests.server_apps:app"],
    ["dev", "tests.server_apps:app", "--no-discovery", "--no-poll"],
    ["worker", "tests.server_apps:app"],
)


def run_cli(args: list[str], db_url: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": REPO, "STEPLINE_EVENT_KEY": "ek", "STEPLINE_API_TOKEN": "tok", "STEPLINE_PORT": "0", **extra_env}
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


# --- a database that does not answer yet ------------------------------------------------


def _through(proxy: CuttingProxy, url: str) -> str:
    """``url`` reached through ``proxy`` (same user and database)."""
    head, tail = url.split("@", 1)
    return f"{head}@127.0.0.1:{proxy.port}/{tail.split('/', 1)[1]}"


@pytest.fixture
def proxy() -> Iterator[CuttingProxy]:
    server = urllib.parse.urlsplit(PG_ADMIN_URL)
    proxy = CuttingProxy(server.hostname or "127.0.0.1", server.port or 5432).start()
    yield proxy
    proxy.stop()


def test_a_worker_started_while_postgres_restarts_waits_for_it(postgres_url: str, proxy: CuttingProxy) -> None:
    """A process started while its database restarts (seen from it: connections refused)
    comes up once the database answers again, rather than exiting."""
    proxy.outage(3.0)
    env = {**os.environ, "PYTHONPATH": REPO, "STEPLINE_CONNECT_WAIT": "60"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "stepline.cli", "worker", "tests.server_apps:app", "--db", _through(proxy, postgres_url)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert worker.stdout is not None and worker.stderr is not None
        ready = worker.stdout.readline()  # the worker's first line, once it runs
        assert ready.startswith("stepline worker w-"), (ready, worker.poll())
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=60)
    assert "does not answer yet" in err and "STEPLINE_CONNECT_WAIT" in err, err
    assert "answers again" in err, err


def test_without_a_wait_a_database_that_does_not_answer_is_named_at_once(postgres_url: str, proxy: CuttingProxy) -> None:
    proxy.outage(60.0)
    env_wait = {"STEPLINE_CONNECT_WAIT": "0"}
    result = run_cli(["worker", "tests.server_apps:app"], _through(proxy, postgres_url), **env_wait)
    line = one_line_error(result)
    assert "cannot open the database" in line, line


def test_a_database_that_refuses_this_client_for_good_is_not_waited_for(postgres_url: str) -> None:
    """No such database: the server answered, and waiting would not change its answer."""
    missing = postgres_url.rsplit("/", 1)[0] + "/stepline_no_such_database"
    result = run_cli(["worker", "tests.server_apps:app"], missing, STEPLINE_CONNECT_WAIT="600")
    line = one_line_error(result)
    assert "cannot open the database" in line and "does not exist" in line, line


@pytest.mark.parametrize("command", COMMANDS[:2], ids=["start", "dev"])
def test_a_port_in_use_is_named_with_the_fix_before_any_banner(command: list[str], sqlite_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(command, sqlite_url, STEPLINE_PORT=str(port))
    line = one_line_error(result)
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in line and "--port" in line, line
    assert f"http://127.0.0.1:{port}" not in result.stdout, result.stdout  # no banner for a server that never served


@pytest.mark.parametrize("command", COMMANDS, ids=["start", "dev", "worker"])
def test_a_file_sqlite_cannot_read_is_named_not_traced(command: list[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What a full disk or a damaged file makes SQLite say when the schema is read (here:
    not a database at all) ended `stepline start` with a traceback."""
    path = tmp_path / "damaged.db"
    path.write_bytes(b"this is not a database " * 200)
    line = one_line_error(run_cli(command, str(path)))
    assert "damaged.db" in line and "file is not a database" in line, line


def test_migrate_names_a_file_sqlite_cannot_read_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "damaged.db"
    path.write_bytes(b"this is not a database " * 200)
    line = one_line_error(run_cli(["migrate"], str(path)))
    assert "damaged.db" in line and "file is not a database" in line, line



@pytest.mark.parametrize("command", COMMANDS, ids=["start", "dev", "worker"])
def test_a_bad_log_level_is_named_not_traced(command: list[str], sqlite_url: str) -> None:
    """STEPLINE_LOG_LEVEL=LOUD ended each of them with logging's ValueError and a traceback,
    where every other variable's bad value is named with what it takes."""
    line = one_line_error(run_cli(command, sqlite_url, STEPLINE_LOG_LEVEL="LOUD"))
    assert "STEPLINE_LOG_LEVEL='LOUD'" in line and "DEBUG, INFO, WARNING, ERROR" in line, line


def test_a_bad_duration_says_durations_are_taken(sqlite_url: str) -> None:
    """A duration variable's refusal said "expected float", though 30s, 5m or 7d are taken."""
    result = run_cli(["worker", "tests.server_apps:app"], sqlite_url, STEPLINE_LEASE="abc")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: STEPLINE_LEASE='abc'") and "a duration like 30s" in last, result.stderr


@pytest.mark.parametrize("var", ["STEPLINE_SYNC_THREADS", "STEPLINE_CONCURRENCY", "STEPLINE_LEASE"])
def test_a_zero_that_would_stop_all_work_is_refused(var: str, sqlite_url: str) -> None:
    """STEPLINE_SYNC_THREADS=0 ended the worker with the thread pool's ValueError; a
    concurrency or lease of 0 started a worker that never ran a run."""
    result = run_cli(["worker", "tests.server_apps:app"], sqlite_url, **{var: "0"})
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {var}='0': expected a value above 0"), result.stderr


def test_settings_take_zero_where_it_means_something() -> None:
    from stepline import errors, settings

    taken = settings.from_env({"STEPLINE_PORT": "0", "STEPLINE_RETENTION": "0", "STEPLINE_CONNECT_WAIT": "0", "STEPLINE_RETRY_BASE": "0"})
    assert (taken.port, taken.retention, taken.connect_wait, taken.retry_base) == (0, 0.0, 0.0, 0.0)
    with pytest.raises(errors.ConfigError, match=r"STEPLINE_PORT='-1': expected a value 0 or more"):
        settings.from_env({"STEPLINE_PORT": "-1"})
    with pytest.raises(errors.ConfigError, match=r"STEPLINE_PORT='70000': expected a port, 0 to 65535"):
        settings.from_env({"STEPLINE_PORT": "70000"})  # else the socket's OverflowError at start
