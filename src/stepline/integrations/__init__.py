"""Stepline inside the web frameworks people already use.

- ``stepline.integrations.fastapi``: a lifespan that embeds a worker in the app or connects
  to a Stepline server, a dependency that gives routes a client, and the job-status routes.
- ``stepline.integrations.django``: an app configured by ``settings.STEPLINE``, the
  ``manage.py stepline_worker`` command, sending from sync and async views, job status.
- ``stepline.integrations.flask``: an extension for sending from routes and job status.

Each imports its framework only when used (``pip install 'stepline[fastapi]'``, ``[django]``,
``[flask]``). The framework-neutral parts: ``core`` (one connection, embedded or remote),
``jobs`` (the job-status pattern: a run token per job, a status read and an SSE
stream), ``blocking`` (the same connection for sync code).
"""
