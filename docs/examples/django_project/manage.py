#!/usr/bin/env python
"""The Django example's manage.py: ``python manage.py runserver`` (the site) and
``python manage.py stepline_worker`` (its functions), side by side on one database."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_example.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
