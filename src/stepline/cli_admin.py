"""``stepline admin``: prune | stats | backup | vacuum, for a database that runs for months.

Each command opens the database (``--db`` / ``STEPLINE_DB``) itself, next to any running
workers and servers: prune takes the same lease as their background sweeps, so only
one process prunes at a time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from stepline import durations, errors, ids
from stepline import settings as settings_mod

if TYPE_CHECKING:
    from stepline.store import Store

T = TypeVar("T")


def _settings(db: str | None) -> settings_mod.Settings:
    try:
        return settings_mod.from_env().replace(db=db)
    except errors.ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def _with_store(settings: settings_mod.Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work(store)`` on the database, which must be migrated (``stepline migrate``)."""
    from stepline.store import open_store

    async def main() -> T:
        store = open_store(settings.db, migrate_now=False)
        await store.start()
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except errors.SteplineError as exc:
        raise click.ClickException(str(exc).strip().splitlines()[0]) from exc


def _db_option(fn: Any) -> Any:
    return click.option("--db", default=None, help="SQLite path or postgresql:// URL (STEPLINE_DB).")(fn)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(count)


def _seconds(text: str) -> str:
    seconds = float(text)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@click.group()
def admin() -> None:
    """Retention, sizes, backups and vacuum of the database (--db / STEPLINE_DB)."""


@admin.command()
@_db_option
@click.option("--older-than", default=None, help="Delete finished runs that ended longer ago than this (e.g. 30d) instead of STEPLINE_RETENTION; functions with their own retention= keep it.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted, deleting nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def prune(db: str | None, older_than: str | None, dry_run: bool, as_json: bool) -> None:
    """Delete what retention no longer keeps, now (as the background sweep does)."""
    from stepline.engine import retention

    settings = _settings(db)
    try:
        seconds = None if older_than is None else durations.parse(older_than, field="--older-than")
    except errors.ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc
    if seconds is not None and seconds <= 0:
        raise click.BadParameter("--older-than: must be longer than zero, e.g. 30d")

    async def work(store: Store) -> retention.SweepReport:
        sweeper = retention.Sweeper(store, settings, owner=f"admin-{ids.new_id()}")
        report = await sweeper.sweep(force=True, older_than=seconds, rehearse=dry_run)
        assert report is not None  # forced: a report, or SweepBusy
        return report

    report = _with_store(settings, work)
    deleted = {t: n for t, n in report.deleted.items() if n}
    body = {
        "dry_run": dry_run,
        "deleted": deleted,
        "runs_by_function": report.runs_by_function,
        "kept_referenced": report.kept_referenced,
    }
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    if not deleted:
        click.echo(f"nothing to delete (retention {_seconds(str(seconds or settings.retention))})")
    for table, count in sorted(deleted.items()):
        click.echo(f"{verb} {count:>10} {table}")
    for function_id, count in sorted(report.runs_by_function.items()):
        click.echo(f"  runs of {function_id}: {count}")
    if report.kept_referenced:
        click.echo(f"kept {report.kept_referenced} finished run(s) that unfinished runs still point at")


@admin.command()
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def stats(db: str | None, as_json: bool) -> None:
    """Rows, bytes and oldest row per table, queue depth, file space, the last sweeps."""
    settings = _settings(db)

    async def work(store: Store) -> dict[str, Any]:
        depth = await store.queue_depth()
        return {
            "database": store.dialect,
            "tables": await store.table_sizes(exact=True),
            "oldest": await store.oldest_rows(),
            "queue": {state: sum(d[state] for d in depth) for state in ("ready", "scheduled", "leased")},
            "file": await store.file_space(),
            "retention": {
                "default_seconds": settings.retention,
                "usage_seconds": settings.usage_retention,
                "functions": await store.retention_policies(),
                "sweep": await store.sweep_status(),
            },
        }

    body = _with_store(settings, work)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"{'TABLE':<20} {'ROWS':>12} {'BYTES':>11}  OLDEST")
    for row in body["tables"]:
        oldest = body["oldest"].get(row["table"])
        click.echo(f"{row['table']:<20} {row['rows']:>12} {_size(row['bytes']):>11}  {_when(oldest) if oldest else '-'}")
    queue = body["queue"]
    click.echo(f"queue: {queue['ready']} ready, {queue['scheduled']} scheduled, {queue['leased']} leased")
    space = body["file"]
    if space:
        free = space["freelist_count"] * space["page_size"]
        click.echo(
            f"file: {_size(space['file_bytes'])}, WAL {_size(space['wal_bytes'])}, {_size(free)} free inside "
            f"(auto_vacuum {space['auto_vacuum']})"
        )
        if space["auto_vacuum"] != "incremental":
            click.echo("  run `stepline admin vacuum` once so that freed space goes back to the file system")
    policy = body["retention"]
    keep = "forever" if policy["default_seconds"] <= 0 else _seconds(str(policy["default_seconds"]))
    usage = "forever" if policy["usage_seconds"] <= 0 else _seconds(str(policy["usage_seconds"]))
    click.echo(f"retention: finished runs {keep}, LLM usage (daily sums) {usage}")
    for function_id, seconds in sorted(policy["functions"].items()):
        click.echo(f"  {function_id}: {_seconds(str(seconds))}")
    sweep = policy["sweep"]
    click.echo(
        f"last sweep: started {_when(sweep['last_started_at'])}, finished {_when(sweep['last_finished_at'])}"
        + (f"; running now in {sweep['owner']}" if sweep["owner"] else "")
    )
    if sweep["deleted"]:
        click.echo("deleted so far: " + ", ".join(f"{n} {t}" for t, n in sorted(sweep["deleted"].items())))


@admin.command()
@click.argument("path")
@_db_option
def backup(path: str, db: str | None) -> None:
    """A consistent copy of a SQLite database at PATH, taken while it is in use.

    PostgreSQL: use pg_dump (the command says how).
    """
    settings = _settings(db)
    size = _with_store(settings, lambda store: store.backup(path))
    click.echo(f"backed up {settings.db} to {path} ({_size(size)})")


@admin.command()
@_db_option
def vacuum(db: str | None) -> None:
    """Give free space back: SQLite's file shrinks (a database created before incremental
    vacuum is rebuilt once, holding the write lock meanwhile); PostgreSQL: VACUUM (ANALYZE)
    of the tables retention prunes."""
    from stepline.store import ops_retention

    settings = _settings(db)
    result = _with_store(settings, lambda store: store.vacuum(ops_retention.TABLES))
    if "bytes_before" in result:
        click.echo(f"{result['how']}: {_size(result['bytes_before'])} -> {_size(result['bytes_after'])}")
    else:
        click.echo(f"{result['how']} on {result['database']}")
