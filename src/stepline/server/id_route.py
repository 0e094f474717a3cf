"""Routes whose path parameter is an id that may hold '/' (``billing/charge``): the client
sends it as ``%2F`` (the dashboard's ``encodeURIComponent``, the CLI's ``quote``), but the
server decodes ``%2F`` into ``/`` before routing, so ``{function_id}`` never matched such an
id. These routes match the path as received (``raw_path``) and decode each parameter
after, so an id that ends like another route (``billing/charge/pause``) stays one id."""

from __future__ import annotations

from urllib.parse import unquote

from starlette.routing import Match, Route
from starlette.types import Scope

ENCODE_HINT = "send a '/' inside a function id as %2F (e.g. /api/v1/functions/billing%2Fcharge/pause)"


class IdRoute(Route):
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        raw = scope.get("raw_path")
        if scope["type"] != "http" or not isinstance(raw, bytes):
            return super().matches(scope)
        try:
            path = raw.decode("ascii")
        except UnicodeDecodeError:  # not percent-encoded as HTTP asks: the decoded path decides
            return super().matches(scope)
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # a server started with --root-path may pass it on
            path = path[len(root):]
        match, child = super().matches({**scope, "path": path, "root_path": ""})
        if match is not Match.NONE:
            child["path_params"] = {k: unquote(v) if isinstance(v, str) else v for k, v in child["path_params"].items()}
        return match, child
