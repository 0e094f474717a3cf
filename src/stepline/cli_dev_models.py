"""For ``stepline dev``: SIMULATED models when no provider is configured, and the line that says so."""

from __future__ import annotations

import dataclasses
from collections.abc import MutableMapping

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stepline.fakes.behaviours import Reply
from stepline.fakes.provider import FakeProvider
from stepline.llm import providers

DEV_MODELS_PATH = "/api/v1/dev/models"


@dataclasses.dataclass(frozen=True)
class DevModels:
    """The fake provider serving the SIMULATED models, and the notice to print."""

    provider: FakeProvider
    notice: str

    def stop(self) -> None:
        self.provider.stop()

    def route(self) -> Route:
        """``GET /api/v1/dev/models``: where the SIMULATED models are, so that another process
        on this machine (``uvicorn stepline.examples.chat_api:api``) can call them too: the
        ``STEPLINE_LLM_*`` variables to set. Served by ``stepline dev`` alone."""

        async def dev_models(request: Request) -> Response:
            return JSONResponse({"simulated": True, "openai_base_url": self.provider.openai_base_url, "env": self.provider.env()})

        return Route(DEV_MODELS_PATH, dev_models, methods=["GET"])


def start(environ: MutableMapping[str, str]) -> DevModels | None:
    """With no provider configured in ``environ``, serve SIMULATED models and point ``environ`` at them.

    Starts a ``FakeProvider`` (``fake-quick`` answers in ~0.3 s, ``fake-slow`` in ~2 s
    plus a slow stream; both report a made-up cost) and sets the ``STEPLINE_LLM_*``
    variables that ``stepline.llm`` reads. Returns None when a real provider is
    configured (which includes one started here before).
    """
    configured, _ = providers.from_env(environ)
    if configured:
        return None
    fake = FakeProvider(latency=0.3, chunk_delay=0.02, cost_per_mtok=1.0)
    fake.on_model("fake-slow", Reply(delay=2.0, chunk_delay=0.05))
    fake.start()
    environ.update(fake.env())
    notice = (
        f"stepline dev: no LLM provider is configured, so models are SIMULATED by the fake provider at "
        f"{fake.openai_base_url} (set OPENROUTER_API_KEY, OPENAI_API_KEY, ANTHROPIC_API_KEY or STEPLINE_LLM_BASE_URL for real ones); "
        f"other processes find it at {DEV_MODELS_PATH}"
    )
    return DevModels(fake, notice)
