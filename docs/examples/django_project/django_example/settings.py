"""A small Django site that hands long work to Stepline (``pip install 'stepline[django]'``).

    cd docs/examples/django_project
    python manage.py stepline_worker &          # runs the functions
    python manage.py runserver                  # the site: POST /summarise, /jobs/...

Both use the database in STEPLINE["DB"] (SQLite by default; a PostgreSQL URL for many
processes). Set STEPLINE["URL"] instead to send through a Stepline server.
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "django_example.urls"
INSTALLED_APPS = ["stepline.integrations.django"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES: dict = {}  # the site keeps no tables of its own here; Stepline keeps the jobs
USE_TZ = True

STEPLINE = {
    "APPS": ["django_example.jobs:app"],
    "DB": os.environ.get("STEPLINE_DB", ".stepline/django-example.db"),
    "SIGNING_KEY": os.environ.get("STEPLINE_SIGNING_KEY", "example-signing-key-change-me"),
    "RUN_WORKER": os.environ.get("STEPLINE_RUN_WORKER", "") == "1",  # a worker in each web process, if asked
}
STEPLINE_JOBS_PATH = "/jobs/"
