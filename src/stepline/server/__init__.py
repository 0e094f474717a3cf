"""The HTTP face: event ingest, the JSON API, live streams and the dashboard (ASGI)."""

from stepline.server.app import create_app

__all__ = ["create_app"]
