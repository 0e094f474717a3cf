"""Run apps written for the official Inngest SDKs on Stepline, unchanged.

``attach(engine, InngestOptions(...))`` before ``engine.start()``, then
``await runtime.start()``; the HTTP side lives in ``stepline.server.inngest``.
"""

from stepline.inngest.runtime import (
    AppStatus,
    InngestOptions,
    InngestRuntime,
    RegistrationError,
    RegistrationUnauthorized,
    attach,
)

__all__ = ["AppStatus", "InngestOptions", "InngestRuntime", "RegistrationError", "RegistrationUnauthorized", "attach"]
