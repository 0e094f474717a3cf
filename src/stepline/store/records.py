"""Records the store hands out, and the status vocabulary."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Required, TypedDict

from stepline.function import StoredBudget, StoredConfig


class RunStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for a worker (or for a retry's backoff)
    RUNNING = "running"  # a worker holds its lease and is executing steps
    SLEEPING = "sleeping"  # suspended in step.sleep / sleep_until
    WAITING = "waiting"  # suspended in wait_for_event or invoke
    COMPLETED = "completed"  # the function returned
    FAILED = "failed"  # retries spent, or a NonRetriableError
    CANCELLED = "cancelled"  # by API/CLI, cancel_on, a timeout or singleton

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SLEEPING, RunStatus.WAITING)
# For SQL: ``status IN {TERMINAL_SQL}``.
TERMINAL_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(TERMINAL)) + ")"

# The error of a run cancelled by ``timeouts.finish``, whether it was executing or suspended.
FINISH_TIMEOUT = {"name": "FinishTimeout", "message": "the run did not finish within timeouts.finish"}


class StepStatus(enum.StrEnum):
    COMPLETED = "completed"  # result saved; never runs again
    FAILED = "failed"  # retries spent; replays raise StepError
    RETRYING = "retrying"  # an attempt failed; the next waits for its backoff
    SLEEPING = "sleeping"  # step.sleep until wake_at
    WAITING = "waiting"  # wait_for_event until a match or wake_at (timeout)
    INVOKING = "invoking"  # waiting for an invoked run to end, or wake_at (timeout)
    CANCELLED = "cancelled"  # the run ended while this step was still open (one of the four above)


class WaitReason(enum.StrEnum):
    """Why a run that is not finished is not executing right now."""

    QUEUED = "queued"
    RETRY_BACKOFF = "retry_backoff"
    SCHEDULED = "scheduled"  # step.sleep
    WAITING_FOR_EVENT = "waiting_for_event"
    INVOKING = "invoking"
    THROTTLED = "throttled"
    CONCURRENCY_LIMITED = "concurrency_limited"
    DEBOUNCING = "debouncing"
    BATCHING = "batching"
    BUDGET_EXCEEDED = "budget_exceeded"  # an ai.infer step would pass a budget: until the period ends or the limit is raised
    FUNCTION_PAUSED = "function_paused"  # its function is paused (queue mode): until it is resumed


# --- what the store reads out (the API's JSON, the CLI, the test kit) -----------------
# Times are ISO 8601 strings (UTC, milliseconds); outputs, errors and bodies are the
# stored JSON, parsed.


class AttemptView(TypedDict):
    attempt: int
    error: Any
    started_at: str | None
    ended_at: str | None


class StepView(TypedDict):
    id: str  # the step key (``fetch:2`` for a third use of ``fetch``)
    name: str
    kind: str
    status: str  # StepStatus
    attempts: int
    output: Any
    error: Any
    started_at: str | None
    ended_at: str | None
    wake_at: str | None
    duration_ms: int | None
    meta: Any
    attempt_history: list[AttemptView]


class RunView(TypedDict, total=False):
    """A run as read out; the keys after ``duration_ms`` come with a single run's read."""

    id: Required[str]
    function_id: Required[str]
    status: Required[str]  # RunStatus
    wait_reason: Required[str | None]  # WaitReason
    attempt: Required[int]
    user_id: Required[str | None]
    progress: Required[float | None]
    progress_message: Required[str | None]
    output: Required[Any]
    error: Required[Any]
    event_id: Required[str]
    parent_run_id: Required[str | None]
    replay_of: Required[str | None]
    created_at: Required[str | None]
    started_at: Required[str | None]
    ended_at: Required[str | None]
    updated_at: Required[str | None]
    duration_ms: Required[int | None]
    output_elided: bool  # in listings: the output was too long to list (``output`` null): read the run itself
    event: Any  # the triggering event's body
    steps: list[StepView]
    function_attempts: list[FunctionAttempt]  # the function's own failed attempts
    budget: BudgetPauseView | None  # a run paused on a budget: which, key, spend, limit
    usage: Usage  # the API adds tokens and cost,
    step_usage: dict[str, StepUsage]  # each model call's, by step key,
    schedule: RunSchedule | None  # when a queued run is due,
    links: RunLinks  # and its related runs and events


class RunSummary(TypedDict):
    """A run as a list of an event's runs shows it (a full ``RunView`` is one too)."""

    id: str
    function_id: str
    status: str


class EventFields(TypedDict):
    id: str
    name: str
    body: Any
    user_id: str | None
    received_at: str | None
    skipped: dict[str, Any]  # function id -> why it started no run
    resumed_runs: list[str]  # runs with a step waiting for this event, which it resumed


class EventView(EventFields, total=False):
    """An event as read on its own, with the runs it started."""

    runs: Required[list[RunView]]
    skipped_functions: list[dict[str, Any]]  # with the event's detail: each trigger that started nothing, and why
    why_no_runs: str | None
    cancelled_runs: list[RunView]


class EventListItem(EventFields):
    """An event in a listing, with a summary of each run it started."""

    runs: list[RunSummary]
    run_ids: list[str]
    body_elided: bool  # the body was too long to list (``body`` null): read the event itself


class RunMessage(TypedDict):
    """A message a run published (``ctx.publish``), ``data`` parsed."""

    seq: int
    topic: str
    data: Any
    at: str | None


class RunLive(RunView, total=False):
    """What a run's stream sends: the run, and its messages after a sequence number."""

    messages: Required[list[RunMessage]]
    more_messages: Required[bool]  # messages past these wait for the next read (a page is bounded)


class FunctionRow(TypedDict):
    """A registered function as listed: its stored config, parsed."""

    id: str
    app_id: str
    config: StoredConfig
    updated_at: str | None


class FunctionPause(TypedDict):
    """A paused function's pause."""

    mode: str  # queue | skip
    reason: str | None
    paused_at: str | None


class FunctionCounts(TypedDict):
    """A function's live runs by status, and those that ended in the last hour."""

    queued: int
    running: int
    sleeping: int
    waiting: int
    failed_last_hour: int
    completed_last_hour: int
    cancelled_last_hour: int


class FunctionOverview(TypedDict):
    """A registered function with its pause and live counts (``GET /api/v1/functions``)."""

    id: str
    app_id: str
    triggers: list[dict[str, Any]]
    config: StoredConfig
    updated_at: str | None
    paused: FunctionPause | None
    # An SDK function its app no longer registers: no new runs; its runs wait for it to come back.
    archived: bool
    counts: FunctionCounts


# --- metrics ------------------------------------------------------------------------


class QueueTotal(TypedDict):
    ready: int  # due now, no worker holds it
    scheduled: int  # due later: sleeps, retries, waits with a timeout
    leased: int  # held by a worker


class QueueDepth(QueueTotal):
    """One function's queue rows."""

    function_id: str


class StatusCount(TypedDict):
    function_id: str
    status: str  # RunStatus
    count: int


class FunctionStats(TypedDict):
    """One function's runs that ended in a window, and those running now."""

    function_id: str
    running: int
    completed: int
    failed: int
    cancelled: int
    success_rate: float | None  # completed / (completed + failed)
    p50_ms: int | None
    p95_ms: int | None


class Usage(TypedDict):
    """Tokens and cost of model calls."""

    calls: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    total_tokens: int
    cost_usd: float


class DayUsage(Usage):
    day: str  # the UTC day, ISO 8601


class UserUsage(Usage):
    user_id: str | None


class ModelUsage(Usage):
    provider: str | None
    model: str


class StepUsage(Usage):
    """One model-call step's calls (its last call's provider, model and latency)."""

    provider: str | None
    model: str
    latency_ms: int | None


class MetricsOverview(TypedDict, total=False):
    """What the metrics page shows (``GET /api/v1/metrics``)."""

    queue: Required[list[QueueDepth]]
    queue_total: Required[QueueTotal]
    running: Required[int]
    functions: Required[list[FunctionStats]]
    usage_by_day: Required[list[DayUsage]]
    usage_by_user: Required[list[UserUsage]]
    usage_by_model: Required[list[ModelUsage]]
    window_seconds: float  # the API adds the window of the run stats
    days: int  # and the days of usage


# --- functions as operators see them -----------------------------------------------


class PauseResult(TypedDict):
    function_id: str
    paused: FunctionPause


class ResumeResult(TypedDict):
    function_id: str
    was_paused: bool
    resumed_runs: int


class InvokeResult(TypedDict):
    """What an invoke from outside a run started (``POST /invoke/{slug}``, the API's invoke)."""

    event_id: str
    run_id: str | None  # the run that answers the invoke (a batch's, a debounce window's); None: none
    skipped: str | None  # why no run started (rate_limited, idempotent, singleton, function_paused)
    message: str | None  # that, said for a person: the function and the rule


class DetailCounts(TypedDict):
    """A function's live runs by status, and those that ended in the window by outcome."""

    queued: int
    running: int
    sleeping: int
    waiting: int
    completed: int
    failed: int
    cancelled: int


class FunctionDetail(TypedDict, total=False):
    """A function's page (``GET /api/v1/functions/{id}/summary``)."""

    id: Required[str]
    app_id: Required[str]
    triggers: Required[list[dict[str, Any]]]
    config: Required[StoredConfig]
    updated_at: Required[str | None]
    paused: Required[FunctionPause | None]
    since: Required[str | None]
    counts: Required[DetailCounts]
    success_rate: Required[float | None]
    p50_ms: Required[int | None]
    p95_ms: Required[int | None]
    usage: Required[Usage]
    recent_runs: Required[list[RunView]]
    window_seconds: float  # the API adds the window


class Replayed(TypedDict):
    replay_of: str
    id: str  # the new run


class BulkReplay(TypedDict):
    matched: int  # failed runs in the window
    replayed: int
    already_replayed: int
    runs: list[Replayed]


class RunBrief(TypedDict):
    """A run as another run's links show it."""

    id: str
    function_id: str
    status: str  # RunStatus
    created_at: str | None


class ChildRun(RunBrief):
    step: str | None  # the parent's step that invoked it


class ReplayRun(RunBrief):
    kind: str  # replay | rerun


class RunLinks(TypedDict):
    """The runs and events around a run."""

    cancelled_by_event: str | None
    parent: RunBrief | None
    children: list[ChildRun]
    replays: list[ReplayRun]
    failure_handler_runs: list[RunBrief]
    handles_failure_of: RunBrief | None


class RunSchedule(TypedDict):
    """When an unfinished run is due, and whether it is held or set aside."""

    due_at: str | None
    held_by_worker: bool
    set_aside_on: str | None  # queue.parked_on: a paused function, a concurrency limit


class EndedRun(RunView, total=False):
    """A run in the log of ended runs, with its end in ms (the next page's cursor)."""

    ended_ms: Required[int]


class FunctionRef(TypedDict):
    id: str
    app_id: str


class UserRuns(TypedDict):
    user_id: str
    runs: int


class SearchResult(TypedDict):
    """What a search names (``GET /api/v1/search``)."""

    query: str
    runs: list[RunView]
    events: list[EventFields]
    functions: list[FunctionRef]
    users: list[UserRuns]


class FunctionAttempt(TypedDict):
    """A failed attempt of a function as a whole."""

    attempt: int
    error: Any
    at: str | None


# --- operator actions, retention and maintenance ----------------------------------------


class Rerun(TypedDict):
    id: str  # the new run
    rerun_of: str
    reused_steps: list[str]  # keys of the committed steps it starts with


class SweepSummary(TypedDict):
    """What the last sweep that finished deleted."""

    started_at: int  # ms
    finished_at: int | None
    deleted: dict[str, int]  # table -> rows
    kept_referenced: int  # finished runs past their age that something unfinished points at


class SweepStatus(TypedDict):
    """Who holds the retention sweep, when the last one ran, and the totals it deleted."""

    owner: str | None
    expires_at: int | None  # ms
    last_started_at: int | None
    last_finished_at: int | None
    deleted: dict[str, int]  # table -> rows, over every sweep
    last: SweepSummary | None


class TableSize(TypedDict):
    table: str
    rows: int
    bytes: int | None  # None where it is not known cheaply


class FileSpace(TypedDict, total=False):
    """SQLite: the file's pages and sizes (empty on PostgreSQL)."""

    page_size: int
    page_count: int
    freelist_count: int
    auto_vacuum: str  # none | full | incremental
    file_bytes: int
    wal_bytes: int


class VacuumResult(TypedDict, total=False):
    how: Required[str]
    bytes_before: int  # SQLite
    bytes_after: int
    database: str  # PostgreSQL: the URL, password hidden


# --- cost budgets ----------------------------------------------------------------------


class DeclaredBudget(StoredBudget):
    """A budget as the registered functions declare it, with the functions that do."""

    functions: list[str]


class BudgetOverride(TypedDict):
    limit_usd: float | None
    limit_tokens: int | None


class BudgetKeyState(TypedDict, total=False):
    """One key of a budget in its current period (``GET /api/v1/budgets/{budget}/{key}``)."""

    budget: Required[str]
    key: Required[str]
    scope: Required[str | None]
    period: Required[float | str]
    period_start: Required[int]  # ms
    period_end: Required[int]
    spent_usd: Required[float]  # settled this period
    spent_tokens: Required[int]
    reserved_usd: Required[float]  # held by calls in flight
    reserved_tokens: Required[int]
    calls: Required[int]
    limit_usd: Required[float | None]  # in force: an override, else as declared
    limit_tokens: Required[int | None]
    override: Required[BudgetOverride | None]
    on_exceeded: Required[str]  # pause | fail
    exceeded: Required[bool]  # its budget.exceeded event was sent this period
    paused_runs: Required[int]
    resumed_runs: list[str]  # an override adds the paused runs it made due


class BudgetListing(TypedDict):
    """The declared budgets and their keys' states (``GET /api/v1/budgets``)."""

    budgets: list[DeclaredBudget]
    data: list[BudgetKeyState]


class BudgetPauseView(TypedDict):
    """What a run paused on a budget waits for."""

    budget: str
    key: str
    step: str
    period_start: int  # ms
    period_end: int
    spent_usd: float
    spent_tokens: int
    call_usd: float  # the paused call's worst case
    call_tokens: int
    limit_usd: float | None  # in force
    limit_tokens: int | None
    paused_at: int  # ms


# --- rows the engine and the Inngest driver read as stored ------------------------------
# Columns of their tables, unconverted: times in ms, outputs and errors JSON text.


class JournalRow(TypedDict):
    """A step of a run's journal as the SDK driver reads it (``steps`` columns)."""

    key: str
    kind: str
    status: str  # StepStatus
    output: str | None
    error: str | None
    attempts: int


class StepState(TypedDict):
    """Where one step stands (``steps`` columns)."""

    status: str  # StepStatus
    output: str | None


class CronSchedule(TypedDict):
    """One cron trigger of a function and its next tick (a ``cron_schedules`` row)."""

    function_id: str
    position: int
    cron: str
    timezone: str
    next_tick: int


@dataclasses.dataclass(frozen=True, slots=True)
class JournalEntry:
    """A step as replay sees it."""

    key: str
    kind: str
    status: str
    output: str | None
    error: str | None
    attempts: int
    wake_at: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """A worker's right to write one run: what every write for the run names.

    Each lease of a run (a claim, a reclaim of an expired lease, a hand-off) takes the
    run's next ``epoch``; a write commits only while the queue row still holds this owner
    and epoch, so a worker whose lease was taken over commits nothing more, even when it
    is the same worker that took it. ``epoch`` None checks the owner alone (fencing off:
    ``STEPLINE_FENCING=0``, which exists only to show what fencing prevents).
    """

    run_id: str
    owner: str
    epoch: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Renewal:
    """What a heartbeat committed: the leases it extended and the runs asked to cancel."""

    held: dict[str, int]  # run id -> epoch, for each lease extended
    cancelled: list[str]
    since: float  # time.monotonic() when the writer began it: the new leases last at least from here
    # Leases still held, as last committed, that another transaction had locked (this
    # process's writer saving a step): neither extended nor lost, tried again shortly.
    busy: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A run leased to a worker, with everything needed to execute it."""

    run_id: str
    function_id: str
    attempt: int
    event: dict[str, Any]
    events: list[dict[str, Any]]
    journal: dict[str, JournalEntry]  # by step key, in the order the steps were recorded
    started_at: int
    finish_deadline: int | None
    epoch: int  # this lease's epoch (see Lease)
    # time.monotonic() when the writer began the transaction that leased it: the lease in
    # the database lasts at least ``lease`` from here, whenever that transaction commits.
    leased_at: float


@dataclasses.dataclass(slots=True)
class HandOff:
    """A worker of this process offering to take new runs straight from ingest.

    Runs of ``function_ids`` that may start at once and need no concurrency slot are
    created already leased to ``worker_id``, up to ``limit``; once the ingest commits,
    ``taken`` holds them ready to execute. That saves a claim (a transaction, and two
    hops between threads) between an event and its first step. No queued run is passed
    over: an idle worker knows the queue holds no ready run of its functions; a busy one
    sets ``check_queue`` and the ingest looks, in its own transaction, before it takes any.
    """

    worker_id: str
    function_ids: frozenset[str]
    limit: int
    lease_ms: int
    check_queue: bool = False
    taken: list[ClaimedRun] = dataclasses.field(default_factory=list)
    leased_at: float = 0.0  # set by the ingest's transaction (see ClaimedRun.leased_at)


@dataclasses.dataclass(frozen=True, slots=True)
class StepResult:
    """A step's outcome to checkpoint."""

    key: str
    name: str
    kind: str
    status: str  # completed | failed
    output: str | None
    error: str | None
    attempt: int
    started_at: int
    ended_at: int
    meta: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetPause:
    """A budget that refused a step's reservation: what the paused run waits on (see ops_budget)."""

    budget_id: str
    key: str
    period_start: int
    period_end: int
    need_usd: float  # the call's worst case, to tell when the budget has room again
    need_tokens: int
    limit_usd: float | None  # as declared for this run (an override in the database wins)
    limit_tokens: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetRefusal:
    """The budget that refused a reservation, and where it stood."""

    budget_id: str
    key: str
    period_start: int
    period_end: int
    spent_usd: float  # settled this period
    spent_tokens: int
    reserved_usd: float  # held by calls in flight
    reserved_tokens: int
    limit_usd: float | None  # in force: an override, else as declared
    limit_tokens: int | None
    on_exceeded: str  # pause | fail


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetHold:
    """What one reservation did: the (budget, key, period start) rows it reserved on, or
    the budget that refused it (then nothing was reserved)."""

    rows: tuple[tuple[str, str, int], ...]
    refusal: BudgetRefusal | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Suspension:
    """Why and until when a run stops executing for now."""

    kind: str  # sleep | wait | invoke | retry | budget
    key: str
    name: str
    due_at: int | None  # wake time, timeout, or retry time; None: no timeout
    event_name: str | None = None
    expression: str | None = None
    invoke_function_id: str | None = None
    invoke_data: dict[str, Any] | None = None
    attempt: int = 0
    error: str | None = None
    started_at: int = 0
    step_kind: str = "run"  # for a retry: the kind of the step being retried
    budget: BudgetPause | None = None  # for a budget pause
