"""Cost budgets at the point of spending: reserve before a model call, settle after.

``StepGate`` serves one run's execution (``executor.RunExecution``): before each
attempt of a step that says what it may cost (``budgets.Spend``) it reserves the
worst case on every budget of the function, fenced by the run's lease; a refusal
fails the step (``BudgetExceeded``) or pauses the run (a ``budget`` suspension) as
the budget says. ``DirectGate`` does the same for model calls made outside any run
(``Router``'s quick path), under the budgets of the functions the call's event would
trigger; ``stored_checks``, ``reserve_direct`` and ``settle_direct`` do it for a server
whose clients make the calls (``AsyncClient.call_within_budgets``), from the stored
configs. Spend is settled by ``Ticket.settle`` whatever became of the lease: the money
is spent either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stepline import budgets, errors, expressions, ids
from stepline import event as event_mod
from stepline.budgets import Charge, Check
from stepline.function import Function, StoredBudget, TriggerEvent
from stepline.store import Store
from stepline.store.records import BudgetHold, BudgetPause, BudgetRefusal, Lease

if TYPE_CHECKING:
    from stepline.app import App

DIRECT_FUNCTION = "direct"  # llm_usage.function_id of a call made outside any run
DIRECT_PREFIX = "direct:"  # the ids of direct calls (llm_usage.run_id, budget_reservations.run_id)


@dataclasses.dataclass(frozen=True)
class Ticket:
    """One attempt's reservations, to settle once its cost is known."""

    store: Store
    run_id: str
    step_key: str
    attempt: int
    owner: str | None
    epoch: int | None
    rows: tuple[tuple[str, str, int], ...]
    expires_at: int | None = None  # a direct call's: its reservation stops counting then

    async def settle(self, actual: Charge) -> None:
        await self.store.settle_budget(self.run_id, self.step_key, self.attempt, self.owner, self.epoch, self.rows, actual)


def declared(functions: Iterable[Function]) -> list[StoredBudget]:
    """The budgets of these functions, each once (by name), in their stored form."""
    out: dict[str, StoredBudget] = {}
    for function in functions:
        for budget in function.config.budgets:
            out.setdefault(budget.name or "", budget.to_dict())
    return list(out.values())


def exceeded(refusal: BudgetRefusal, spend: budgets.Spend) -> errors.BudgetExceeded:
    """The error of a refused call: the budget, key, spend and limit, and what to do."""
    spent = f"{budgets.usd(refusal.spent_usd + refusal.reserved_usd)} / {refusal.spent_tokens + refusal.reserved_tokens} tokens"
    if refusal.reserved_usd or refusal.reserved_tokens:
        spent += f" ({budgets.usd(refusal.reserved_usd)} of it reserved by calls in flight)"
    message = (
        f"budget {refusal.budget_id!r} for key {refusal.key!r}: this call may cost up to {budgets.usd(spend.worst.usd)} / "
        f"{spend.worst.tokens} tokens{f' ({spend.describe})' if spend.describe else ''}, and the period has spent {spent} "
        f"of its limit of {budgets.describe_limit(refusal.limit_usd, refusal.limit_tokens)}; raise the limit "
        f"(PUT /api/v1/budgets/{refusal.budget_id}/{refusal.key} or `stepline budgets set`), lower max_tokens, "
        "or wait for the next period"
    )
    return errors.BudgetExceeded(
        message,
        budget=refusal.budget_id,
        key=refusal.key,
        spent_usd=refusal.spent_usd + refusal.reserved_usd,
        spent_tokens=refusal.spent_tokens + refusal.reserved_tokens,
        limit_usd=refusal.limit_usd,
        limit_tokens=refusal.limit_tokens,
        on_exceeded=refusal.on_exceeded,
    )


def pause(refusal: BudgetRefusal, checks: Sequence[Check], need: Charge) -> BudgetPause:
    """What a run refused under ``on_exceeded="pause"`` waits for (limits as declared for it)."""
    check = next(c for c in checks if (c.budget_id, c.key) == (refusal.budget_id, refusal.key))
    return BudgetPause(
        refusal.budget_id, refusal.key, refusal.period_start, refusal.period_end, need.usd, need.tokens,
        check.limit_usd, check.limit_tokens,
    )


class StepGate:
    """The budgets of one run's function, evaluated once against its event."""

    def __init__(self, store: Store, run_id: str, function: Function, event: Mapping[str, Any]) -> None:
        self._store = store
        self._run_id = run_id
        self.checks = budgets.checks(declared([function]), event)
        self._about = {"function_id": function.id, "run_id": run_id, "user_id": event_mod.user_id_of(event)}

    async def reserve(self, lease: Lease, step_key: str, attempt: int, spend: budgets.Spend) -> tuple[Ticket | None, BudgetHold]:
        """Reserve ``spend.worst``; the ticket to settle, or the hold that names the refusal."""
        hold = await self._store.reserve_budget(
            lease, self._run_id, step_key, attempt, self.checks, spend.worst, {**self._about, "step": step_key}
        )
        if hold.refusal is not None:
            return None, hold
        return Ticket(self._store, self._run_id, step_key, attempt, lease.owner, lease.epoch, hold.rows), hold


class DirectGate:
    """Budgets for model calls made outside any run (``Router``'s quick path): those of the
    app's functions that the call's event would trigger, and the app's own."""

    def __init__(self, store: Store, app: App) -> None:
        self._store = store
        self._functions = app.functions
        own = [b.resolved(function_id=DIRECT_FUNCTION, app_id=app.id, default_scope="app") for b in app.budgets]
        self._app_budgets = [b.to_dict() for b in own if b.scope == "app"]

    def checks_for(self, event: Mapping[str, Any]) -> list[Check]:
        name = str(event.get("name") or "")
        variables = {"event": dict(event)}
        triggered = [
            fn for fn in self._functions
            if any(
                isinstance(t, TriggerEvent) and _matches(t.event, name) and expressions.match_checked(t.if_, variables)[0]
                for t in fn.config.triggers
            )
        ]
        found = declared(triggered)
        names = {b["name"] for b in found}
        found += [b for b in self._app_budgets if b["name"] not in names]
        return budgets.checks(found, event)

    async def call(
        self, event: Mapping[str, Any], spend: budgets.Spend, call: Callable[[], Awaitable[dict[str, Any]]], ttl_s: float
    ) -> dict[str, Any]:
        """Reserve, make the call, settle, and file its usage (``llm_usage``, with the user id)."""
        user_id = event_mod.user_id_of(event)
        ticket = await reserve_direct(self._store, self.checks_for(event), spend, user_id, ttl_s)
        try:
            result = await call()
        except Exception as exc:
            await settle_direct(ticket, spend.billed(exc), user_id, None)
            raise
        await settle_direct(ticket, spend.actual(result), user_id, result)
        return result


async def stored_checks(store: Store, event: Mapping[str, Any]) -> list[Check]:
    """The budgets a run of ``event`` would meet, read from the registered functions' stored
    configs: for a server that serves the API of apps whose code it does not hold."""
    return budgets.checks(await store.event_budgets(dict(event)), event)


async def reserve_direct(
    store: Store, checks: Sequence[Check], spend: budgets.Spend, user_id: str | None, ttl_s: float
) -> Ticket:
    """Reserve a direct call's worst case on ``checks`` (all or none), held ``ttl_s`` at most
    if it is never settled; raises ``BudgetExceeded`` when one has no room. Without
    checks nothing is reserved, and the ticket only names the call (to file its usage)."""
    call_id = f"{DIRECT_PREFIX}{ids.new_id()}"
    rows: tuple[tuple[str, str, int], ...] = ()
    expires = store.now_ms() + int(ttl_s * 1000)
    if checks:
        about = {"function_id": DIRECT_FUNCTION, "run_id": None, "user_id": user_id}
        hold = await store.reserve_budget(None, call_id, DIRECT_FUNCTION, 1, list(checks), spend.worst, about, expires)
        if hold.refusal is not None:
            raise exceeded(hold.refusal, spend)
        rows = hold.rows
    return Ticket(store, call_id, DIRECT_FUNCTION, 1, None, None, rows, expires)


async def settle_direct(ticket: Ticket, actual: Charge, user_id: str | None, usage: Mapping[str, Any] | None) -> None:
    """Settle a direct call's reservation to ``actual``, and file its ``usage`` (a completed
    call's result) in ``llm_usage`` with the user; a failed call has none to file."""
    if ticket.rows:
        await ticket.settle(actual)
    if usage is not None:
        await ticket.store.record_direct_usage(ticket.run_id, DIRECT_FUNCTION, user_id, dict(usage))


def _matches(trigger: str, name: str) -> bool:
    if trigger.endswith("*"):
        return name.startswith(trigger[:-1])
    return trigger == name
