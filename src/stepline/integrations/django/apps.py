"""The Django app: checks ``settings.STEPLINE`` when Django starts, and opens a new
connection when the setting changes (``override_settings``)."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed


class SteplineConfig(AppConfig):
    name = "stepline.integrations.django"
    label = "stepline"
    verbose_name = "Stepline"

    def ready(self) -> None:
        from stepline.integrations import django as stepline_django

        stepline_django.options()  # a typo in STEPLINE fails at start, naming the key
        setting_changed.connect(_setting_changed)


def _setting_changed(setting: str, **kwargs: Any) -> None:
    if setting in ("STEPLINE", "STEPLINE_JOBS_PATH"):
        from stepline.integrations import django as stepline_django

        stepline_django.close()
