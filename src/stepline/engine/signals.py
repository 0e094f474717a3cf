"""Control flow through user code. These derive from BaseException on purpose: a
function's ``except Exception`` must not swallow a suspension."""

from __future__ import annotations


class Suspend(BaseException):
    """The run stops executing here for now (sleep, wait, invoke, step retry)."""


class Halt(BaseException):
    """Another branch of this run already suspended it; no new step may start."""
