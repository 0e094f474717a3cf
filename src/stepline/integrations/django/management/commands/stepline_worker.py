"""``manage.py stepline_worker``: run the functions of ``settings.STEPLINE['APPS']`` (as
``stepline worker``), on the database ``settings.STEPLINE['DB']`` (or ``STEPLINE_DB``)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Run a Stepline worker for the apps in settings.STEPLINE['APPS'] (stops on SIGINT or SIGTERM)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=None, help="Runs executed at once (STEPLINE_CONCURRENCY).")

    def handle(self, *args: Any, **options: Any) -> None:
        from django.conf import settings

        from stepline import cli

        config = dict(getattr(settings, "STEPLINE", {}) or {})
        specs = config.get("APPS") or []
        if not specs:
            raise CommandError("settings.STEPLINE['APPS'] lists no apps: add the 'module:attribute' of your stepline.App")
        argv = ["worker", *specs]
        if config.get("DB"):
            argv += ["--db", str(config["DB"])]
        if options.get("concurrency"):
            argv += ["--concurrency", str(options["concurrency"])]
        cli.main.main(argv, prog_name="manage.py stepline_worker", standalone_mode=False)
