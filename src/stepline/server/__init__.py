"""The HTTP face: event ingest, the JSON API, live streams and the dashboard (ASGI)."""

from stepline.server.app import create_app
from stepline.server.tokens import mint_run_token, verify_run_token

__all__ = ["create_app", "mint_run_token", "verify_run_token"]
