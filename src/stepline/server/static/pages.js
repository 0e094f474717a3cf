// Stepline dashboard: the function page, search, a run's related runs, grouped steps and
// the resend form. Loaded before app.js, whose helpers (h, api, setPage, ...) these use
// when they run. Every value from the API is put in the page as text, never as HTML.
"use strict";

// Dollars: cents and up with 2 decimals (4 below a dollar), less than a cent with two
// significant digits, so $0.000031 never shows as $0.0000.
function usd(v) {
  const n = Number(v) || 0;
  if (n === 0) return "$0";
  if (Math.abs(n) < 0.01) return `$${n.toPrecision(2).replace(/0+$/, "")}`;
  return `$${n.toFixed(Math.abs(n) < 1 ? 4 : 2)}`;
}

const tokens = (v) => (v >= 10000 ? `${(v / 1000).toFixed(1)}k` : String(v));

// An absolute time people can read and compare: local date and time to the millisecond.
function clock(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  return h("time", { datetime: iso, title: d.toISOString() }, text);
}

function runLink(r, label) {
  return h("a", { href: `#/runs/${r.id}`, title: r.id, class: "mono" }, label || short(r.id));
}

// --- search --------------------------------------------------------------------------

function searchForm(value) {
  const form = h("form", { class: "search", role: "search", "data-testid": "search", onsubmit: (ev) => {
    ev.preventDefault();
    const q = form.elements.namedItem("q").value.trim();
    if (q) location.hash = `#/search?q=${encodeURIComponent(q)}`;
  } }, h("input", { name: "q", type: "search", value: value || "", size: 30, "aria-label": "Search",
    placeholder: "run or event id, function, user, event name" }));
  return form;
}

async function searchPage(params) {
  const q = params.get("q") || "";
  let found;
  const gen = generation;
  try { found = await api(`/api/v1/search?q=${encodeURIComponent(q)}`); } catch (e) { return setPage("Search", errorBox(e)); }
  if (gen !== generation) return;
  // One match of one kind: go straight there.
  const total = found.runs.length + found.events.length + found.functions.length + found.users.length;
  if (total === 1) {
    if (found.runs.length) { location.replace(`#/runs/${found.runs[0].id}`); return; }
    if (found.events.length) { location.replace(`#/events/${found.events[0].id}`); return; }
    if (found.functions.length) { location.replace(`#/functions/${encodeURIComponent(found.functions[0].id)}`); return; }
  }
  const section = (title, rows, render) => rows.length ? h("div", {}, h("h2", {}, title), h("table", { class: "grid", "data-testid": `found-${title.toLowerCase()}` }, h("tbody", {}, rows.map(render)))) : "";
  setPage(`Search: ${q}`,
    total ? "" : h("p", { class: "muted", "data-testid": "found-nothing" }, "Nothing found. Paste a whole run or event id, the last characters the lists show, a function or user id, or an event name."),
    section("Runs", found.runs, (r) => h("tr", {}, h("td", {}, runLink(r, r.id)), h("td", {}, r.function_id), h("td", {}, badge(r.status)), h("td", {}, when(r.created_at)))),
    section("Events", found.events, (e) => h("tr", {}, h("td", {}, h("a", { href: `#/events/${e.id}`, class: "mono" }, e.id)), h("td", { class: "mono" }, e.name), h("td", {}, when(e.received_at)))),
    section("Functions", found.functions, (f) => h("tr", {}, h("td", {}, h("a", { href: `#/functions/${encodeURIComponent(f.id)}` }, f.id)), h("td", { class: "muted" }, f.app_id))),
    section("Users", found.users, (u) => h("tr", {}, h("td", {}, h("a", { href: `#/runs?user_id=${encodeURIComponent(u.user_id)}`, class: "mono" }, u.user_id)), h("td", { class: "num" }, `${u.runs} run(s)`))),
  );
}

// --- one function ----------------------------------------------------------------------

function pausedTag(p, compact) {
  const mode = p && (p.mode === "skip" ? "paused · skipping events" : "paused · queueing runs");
  return p ? h("span", { class: "tag bad nowrap", "data-testid": "paused", title: `${compact ? mode + ": " : ""}${p.reason || ""} since ${p.paused_at}` },
    compact ? "paused" : mode) : "";
}

function flowControl(cfg) {
  const rows = [];
  const add = (name, value) => rows.push(h("tr", {}, h("th", {}, name), h("td", { class: "mono small" }, value)));
  add("retries", String(cfg.retries ?? "—"));
  for (const c of cfg.concurrency || []) add("concurrency", `${c.limit}${c.key ? ` per ${c.key}` : ""}${c.scope ? ` (${c.scope})` : ""}`);
  if (cfg.throttle) add("throttle", `${cfg.throttle.limit} per ${cfg.throttle.period} s${cfg.throttle.key ? ` per ${cfg.throttle.key}` : ""}`);
  if (cfg.rate_limit) add("rate limit", `${cfg.rate_limit.limit} per ${cfg.rate_limit.period} s${cfg.rate_limit.key ? ` per ${cfg.rate_limit.key}` : ""}`);
  if (cfg.debounce) add("debounce", `${cfg.debounce.period} s${cfg.debounce.key ? ` per ${cfg.debounce.key}` : ""}`);
  if (cfg.batch_events) add("batch", `${cfg.batch_events.max_size} or ${cfg.batch_events.timeout} s`);
  if (cfg.priority) add("priority", cfg.priority.run);
  if (cfg.singleton) add("singleton", `${cfg.singleton.mode}${cfg.singleton.key ? ` per ${cfg.singleton.key}` : ""}`);
  if (cfg.idempotency) add("idempotency", cfg.idempotency);
  for (const c of cfg.cancel_on || []) add("cancel on", `${c.event}${c.expression ? ` if ${c.expression}` : ""}`);
  if (cfg.timeouts) add("timeouts", JSON.stringify(cfg.timeouts));
  return h("table", { class: "grid small kv", "data-testid": "flow-control" }, h("tbody", {}, rows));
}

async function functionPage(fnId, params) {
  const windowValue = params.get("window") || "24h";
  const path = `/api/v1/functions/${encodeURIComponent(fnId)}`;
  const gen = generation;
  let f;
  try { f = await api(`${path}/summary?window=${encodeURIComponent(windowValue)}`); } catch (e) { return setPage(`Function ${fnId}`, errorBox(e)); }
  if (gen !== generation) return;

  const head = h("div", { class: "card" });
  const stats = h("div", { class: "stats" });
  const recent = h("table", { class: "grid", "data-testid": "recent-runs" });

  const pauseBox = h("div", { class: "card", "data-testid": "pause-box" });
  function renderPause() {
    if (f.paused) {
      pauseBox.replaceChildren(
        h("p", {}, pausedTag(f.paused), ` since `, clock(f.paused.paused_at), f.paused.reason ? ` — ${f.paused.reason}` : ""),
        h("button", { class: "primary", "data-testid": "resume", onclick: async () => {
          try { const r = await api(`${path}/resume`, { method: "POST" }); toast(`Resumed; ${r.resumed_runs} held run(s) go on`); refresh(); } catch (e) { toast(e.message, true); }
        } }, "Resume"));
      return;
    }
    const mode = h("select", { name: "mode", "aria-label": "While paused" },
      h("option", { value: "queue" }, "queue new runs until resumed"), h("option", { value: "skip" }, "skip events (start no runs)"));
    const reason = h("input", { name: "reason", placeholder: "why (optional)", size: 24, "aria-label": "Reason" });
    pauseBox.replaceChildren(h("div", { class: "row" },
      h("button", { class: "danger", "data-testid": "pause", onclick: async () => {
        try { await api(`${path}/pause`, { method: "POST", body: JSON.stringify({ mode: mode.value, reason: reason.value || null }) }); toast("Paused"); refresh(); } catch (e) { toast(e.message, true); }
      } }, "Pause"), mode, reason,
      h("span", { class: "muted small" }, "Runs already executing go on until they next sleep, wait or retry.")));
  }

  const invokeForm = h("form", { class: "card send", "data-testid": "invoke", onsubmit: async (ev) => {
    ev.preventDefault();
    let data;
    try { data = JSON.parse(invokeForm.elements.namedItem("data").value || "{}"); } catch (e) { return toast(`data is not valid JSON: ${e.message}`, true); }
    try {
      const r = await api(`${path}/invoke`, { method: "POST", body: JSON.stringify({ data }) });
      toast("Invoked");
      location.hash = `#/runs/${r.run_id}`;
    } catch (e) { toast(e.message, true); }
  } },
    h("h2", {}, "Invoke"),
    h("label", { class: "grow" }, "Data (JSON): the run gets it as ctx.event.data",
      h("textarea", { name: "data", rows: 3 }, '{"user_id": "u1"}')),
    h("button", { type: "submit", class: "primary" }, "Invoke"),
    h("span", { class: "muted small" }, "Starts this function alone, whatever its triggers; to start every function an event triggers, send the event from the Events page."));

  const replayForm = h("form", { class: "card send", "data-testid": "replay-failed", onsubmit: async (ev) => {
    ev.preventDefault();
    const body = {};
    for (const k of ["since", "until"]) { const v = replayForm.elements.namedItem(k).value.trim(); if (v) body[k] = v; }
    if (!confirm(`Replay every failed run of ${fnId}${body.since ? " since " + body.since : ""}${body.until ? " until " + body.until : ""} that has no replay yet?`)) return;
    try {
      const r = await api(`${path}/replay-failed`, { method: "POST", body: JSON.stringify(body) });
      toast(`Replayed ${r.replayed} of ${r.matched} failed run(s)${r.already_replayed ? `; ${r.already_replayed} had been replayed` : ""}`);
      refresh();
    } catch (e) { toast(e.message, true); }
  } },
    h("h2", {}, "Replay failed runs"),
    h("label", {}, "Failed since", h("input", { name: "since", placeholder: "2026-01-31T09:00Z", size: 20 })),
    h("label", {}, "Until", h("input", { name: "until", placeholder: "ISO time or epoch ms", size: 20 })),
    h("button", { type: "submit", "data-testid": "replay-failed-submit" }, "Replay failed runs"));

  function render() {
    const card = (title, value, testid) => h("div", { class: "card stat" }, h("div", { class: "label" }, title), h("div", { class: "big", "data-testid": testid }, value));
    head.replaceChildren(
      h("div", { class: "row" },
        h("div", {}, h("div", { class: "label" }, "App"), f.app_id),
        h("div", {}, h("div", { class: "label" }, "Triggers"), f.triggers.map((t) => h("div", { class: "mono small" }, t.event ? t.event + (t.expression ? ` if ${t.expression}` : "") : `cron ${t.cron}${t.timezone ? ` (${t.timezone})` : ""}`))),
        h("div", {}, h("div", { class: "label" }, "Live"), ["queued", "running", "sleeping", "waiting"].map((k) => `${f.counts[k]} ${k}`).join(" · ")),
        f.paused ? pausedTag(f.paused) : ""),
      h("h2", {}, "Flow control and retries"), flowControl(f.config));
    stats.replaceChildren(
      card(`Completed, last ${windowValue}`, f.counts.completed, "fn-completed"),
      card("Failed", f.counts.failed, "fn-failed"),
      card("Cancelled", f.counts.cancelled, "fn-cancelled"),
      card("p50 / p95", `${ms(f.p50_ms)} / ${ms(f.p95_ms)}`, "fn-durations"),
      card("Model calls", `${f.usage.calls} · ${tokens(f.usage.total_tokens)} tok`, "fn-calls"),
      card("Cost", usd(f.usage.cost_usd), "fn-cost"));
    recent.replaceChildren(
      h("thead", {}, h("tr", {}, ["Run", "Status", "Progress", "User", "Created", "Duration"].map((t) => h("th", {}, t)))),
      h("tbody", {}, f.recent_runs.length ? f.recent_runs.map((r) => h("tr", { "data-run": r.id },
        h("td", {}, runLink(r)), h("td", {}, badge(r.status), r.wait_reason && !TERMINAL.includes(r.status) ? h("span", { class: "muted small" }, ` ${r.wait_reason}`) : ""),
        h("td", {}, progress(r)), h("td", { class: "mono small" }, r.user_id || "—"), h("td", {}, when(r.created_at)), h("td", { class: "num" }, ms(r.duration_ms))))
        : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No runs yet. Invoke it below."))));
    renderPause();
  }

  async function refresh() {
    try { f = await api(`${path}/summary?window=${encodeURIComponent(windowValue)}`); render(); } catch (e) { /* keep the last view */ }
  }

  const picker = h("select", { "aria-label": "Window", onchange: (ev) => { location.hash = `#/functions/${encodeURIComponent(fnId)}?window=${ev.target.value}`; } },
    ["1h", "6h", "24h", "7d", "30d"].map((w) => h("option", { value: w, selected: w === windowValue }, `last ${w}`)));
  render();
  setPage(`Function ${fnId}`, head, pauseBox, h("div", { class: "row" }, picker, h("span", { class: "live" }, "● live")), stats,
    h("div", { class: "row between" }, h("h2", {}, "Recent runs"), h("a", { href: `#/runs?function_id=${encodeURIComponent(fnId)}` }, "All runs →")), recent,
    invokeForm, replayForm, h("h2", {}, "Config"), json(f.config));
  every(3, refresh);
}

// --- a run's related runs ----------------------------------------------------------------

function runLinks(run) {
  const l = run.links;
  if (!l) return "";
  const items = [];
  const item = (label, ...value) => items.push(h("div", {}, h("div", { class: "label" }, label), ...value));
  const list = (runs, extra) => runs.map((r) => h("div", { class: "started" }, runLink(r), " ", r.function_id, " ", badge(r.status), extra ? extra(r) : ""));
  if (l.cancelled_by_event) item("Cancelled by event", h("a", { href: `#/events/${l.cancelled_by_event}`, class: "mono", "data-testid": "cancelled-by" }, short(l.cancelled_by_event)));
  if (l.parent) item("Invoked by", ...list([l.parent]));
  if (l.children.length) item("Invoked", ...list(l.children, (r) => h("span", { class: "muted small" }, ` step ${r.step}`)));
  if (l.replays.length) item("Replays and reruns", ...list(l.replays, (r) => h("span", { class: "tag" }, r.kind)));
  if (l.failure_handler_runs.length) item("On failure", ...list(l.failure_handler_runs));
  if (l.handles_failure_of) item("Handles the failure of", ...list([l.handles_failure_of]));
  return items.length ? h("div", { class: "card row links", "data-testid": "run-links" }, items) : "";
}

// --- steps, grouped ------------------------------------------------------------------------

// Steps grouped by id: a step used n times in a loop ("fetch-page", "fetch-page:1", ...) is
// one collapsible group of its occurrences, in the order each id was first used.
function stepGroups(steps) {
  const groups = new Map();
  for (const st of steps) {
    const base = stepLabel(st).replace(/:\d+$/, "");  // the n-th use of an id is saved as id:n
    if (!groups.has(base)) groups.set(base, []);
    groups.get(base).push(st);
  }
  return [...groups.entries()].map(([base, members]) => ({ base, members }));
}

function groupSummary(base, members, span, start, render) {
  const counts = {};
  for (const st of members) counts[st.status] = (counts[st.status] || 0) + 1;
  const took = members.reduce((a, st) => a + (st.duration_ms || 0), 0);
  const first = Math.max(start, Math.min(...members.map((st) => Date.parse(st.started_at || 0) || start)));
  const last = Math.max(...members.map((st) => Date.parse(st.ended_at || st.started_at || 0) || first));
  const left = Math.max(0, ((first - start) / span) * 100);
  const width = Math.max(0.6, ((last - first) / span) * 100);
  const worst = ["failed", "cancelled", "retrying", "waiting", "sleeping", "invoking", "completed"].find((s) => counts[s]) || "completed";
  const open = members.some((st) => st.status !== "completed");
  return h("details", { class: "step group", "data-key": `group:${base}`, "data-testid": "step-group", open: open || null },
    h("summary", {},
      h("span", { class: "step-name mono" }, base, h("span", { class: "tag" }, `× ${members.length}`)),
      h("span", { class: "muted small" }, members[0].kind),
      h("span", { class: "track" }, h("span", { class: `seg ${worst}`, style: `left:${left}%;width:${Math.min(width, 100 - left)}%` })),
      h("span", { class: "small" }, Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ")),
      h("span", { class: "num small" }, `${members.reduce((a, st) => a + st.attempts, 0)} att.`),
      h("span", { class: "num small" }, ms(took))),
    h("div", { class: "members" }, members.map(render)));
}

// A model call's tokens and cost, from the run's step_usage.
function stepUsage(run, st) {
  const u = (run.step_usage || {})[st.id];
  return u ? u : null;
}

function usageLine(u) {
  return `${u.model} · ${u.prompt_tokens} in / ${u.completion_tokens} out${u.reasoning_tokens ? ` (${u.reasoning_tokens} reasoning)` : ""} · ${usd(u.cost_usd)}${u.calls > 1 ? ` over ${u.calls} calls` : ""}`;
}

// Attempts with their absolute start and end, and the back-off between one and the next.
function attemptsTable(history) {
  return h("table", { class: "grid small", "data-testid": "attempts" },
    h("thead", {}, h("tr", {}, ["Attempt", "Started", "Ended", "Took", "Back-off before", "Error"].map((t) => h("th", {}, t)))),
    h("tbody", {}, history.map((at, i) => h("tr", {},
      h("td", { class: "num" }, at.attempt), h("td", {}, clock(at.started_at)), h("td", {}, clock(at.ended_at)),
      h("td", { class: "num" }, ms(Date.parse(at.ended_at) - Date.parse(at.started_at))),
      h("td", { class: "num" }, i ? ms(Math.max(0, Date.parse(at.started_at) - Date.parse(history[i - 1].ended_at))) : "—"),
      h("td", {}, at.error ? `${at.error.name}: ${at.error.message}` : "—")))));
}

// --- events: edit and send again ---------------------------------------------------------

function resendForm(e) {
  const body = e.body || {};
  const form = h("form", { class: "card send", "data-testid": "resend", hidden: true, onsubmit: async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    let data, user;
    try { data = JSON.parse(f.namedItem("data").value || "{}"); } catch (err) { return toast(`data is not valid JSON: ${err.message}`, true); }
    try { user = f.namedItem("user").value.trim() ? JSON.parse(f.namedItem("user").value) : undefined; } catch (err) { return toast(`user is not valid JSON: ${err.message}`, true); }
    const event = { name: f.namedItem("name").value, data };
    if (user !== undefined) event.user = user;  // the id is left out: a new event, not a duplicate
    try {
      const r = await api("/api/v1/events", { method: "POST", body: JSON.stringify(event) });
      toast("Event sent");
      location.hash = `#/events/${r.ids[0]}`;
    } catch (err) { toast(err.message, true); }
  } },
    h("h2", {}, "Edit and send again"),
    h("label", {}, "Name", h("input", { name: "name", required: true, size: 34, value: e.name })),
    h("label", { class: "grow" }, "Data (JSON)", h("textarea", { name: "data", rows: 6 }, JSON.stringify(body.data || {}, null, 2))),
    h("label", { class: "grow" }, "User (JSON, optional)", h("textarea", { name: "user", rows: 2 }, body.user ? JSON.stringify(body.user) : "")),
    h("button", { type: "submit", class: "primary" }, "Send as a new event"));
  const open = h("button", { "data-testid": "edit-resend", onclick: () => { form.hidden = !form.hidden; } }, "Edit and send again");
  return [open, form];
}
