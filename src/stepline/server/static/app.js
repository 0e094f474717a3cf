// Stepline dashboard: a small front end over /api/v1 (no build step, no dependencies).
// Every value from the API is put in the page as text, never as HTML.
"use strict";

const main = document.getElementById("main");
const TERMINAL = ["completed", "failed", "cancelled"];
const STATUSES = ["queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled"];
const SHOWN_MESSAGES = 500;  // of a run's published messages, the newest kept on its page
const SHOWN_CHARS = 2000;  // of each message's JSON
let cleanup = [];  // timers and streams of the page being shown
let generation = 0;  // bumped on every navigation: a page whose fetch returns late stays away

// --- helpers -------------------------------------------------------------------------

// Unicode's bidi embeddings, overrides and isolates reorder the text after them on screen
// (an id or amount reads as another): shown as escapes wherever the pages put text.
const BIDI_CONTROLS = /[\u202a-\u202e\u2066-\u2069]/g;
const visible = (text) => text.replace(BIDI_CONTROLS, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v;  // CSSOM: the pages' policy refuses style attributes
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(visible(String(c))));
  }
  return el;
}

const svgNS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

async function api(path, opts = {}) {
  const res = await fetch(path, {
    ...opts,
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-stepline-dashboard": "1", ...(opts.headers || {}) },
  });
  if (res.status === 401) { location.href = "/login"; throw new Error("log in first"); }
  const body = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

function toast(text, bad) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = bad ? "show bad" : "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ""; }, 4000);
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const secs = (Date.now() - d.getTime()) / 1000;
  let ago;
  if (secs < 60) ago = `${Math.max(0, Math.round(secs))}s ago`;
  else if (secs < 3600) ago = `${Math.round(secs / 60)}m ago`;
  else if (secs < 86400) ago = `${Math.round(secs / 3600)}h ago`;
  else ago = d.toISOString().slice(0, 10);
  return h("time", { datetime: iso, title: d.toISOString() }, ago);
}

function ms(v) {
  if (v === null || v === undefined) return "—";
  if (v < 1000) return `${v} ms`;
  if (v < 60000) return `${(v / 1000).toFixed(v < 10000 ? 2 : 1)} s`;
  if (v < 3600000) return `${(v / 60000).toFixed(1)} min`;
  return `${(v / 3600000).toFixed(1)} h`;
}

const money = (v) => `$${Number(v).toFixed(v !== 0 && Math.abs(v) < 0.01 ? 6 : 2)}`;
const badge = (status) => h("span", { class: `badge ${status}`, "data-status": status }, status);
const short = (id) => id ? id.slice(-8) : "—";
const json = (v) => h("pre", { class: "json" }, JSON.stringify(v, null, 2));

function progress(run) {
  if (run.progress === null || run.progress === undefined) return h("span", { class: "muted" }, "—");
  const pct = Math.max(0, Math.min(100, run.progress));
  return h("div", { class: "progress", title: run.progress_message || "" },
    h("div", { class: "bar", style: `width:${pct}%` }), h("span", { class: pct >= 55 ? "on-bar" : null }, `${Math.round(pct)}%`));
}

function every(seconds, fn) {
  // A tab out of sight asks nothing, and catches up when shown again: tabs left open in
  // the background would otherwise each keep reading the same pages.
  const tick = () => { if (!document.hidden) fn(); };
  const id = setInterval(tick, seconds * 1000);
  document.addEventListener("visibilitychange", tick);
  cleanup.push(() => { clearInterval(id); document.removeEventListener("visibilitychange", tick); });
}

function setPage(title, ...children) {
  main.replaceChildren(h("h1", {}, title), ...children);
}

function errorBox(err) {
  return h("div", { class: "card error" }, String(err.message || err));
}

// --- functions -----------------------------------------------------------------------

function configSummary(cfg) {
  const parts = [];
  if (cfg.retries !== undefined) parts.push(`retries ${cfg.retries}`);
  for (const c of cfg.concurrency || []) parts.push(`concurrency ${c.limit}${c.key ? " per key" : ""}`);
  for (const key of ["throttle", "rate_limit", "debounce", "priority", "batch_events", "singleton", "idempotency"]) {
    if (cfg[key]) parts.push(key.replace("_", " "));
  }
  if ((cfg.cancel_on || []).length) parts.push(`cancel on ${cfg.cancel_on.map((c) => c.event).join(", ")}`);
  if (cfg.timeouts) parts.push("timeouts");
  return parts.join(" · ");
}

async function functionsPage() {
  setPage("Functions", h("p", { class: "muted" }, "Loading…"));
  const table = h("table", { class: "grid", "data-testid": "functions" });
  async function load() {
    const { data } = await api("/api/v1/functions");
    table.replaceChildren(
      h("thead", {}, h("tr", {}, ["Function", "Triggers", "Config", "Queued", "Running", "Sleeping", "Waiting", "Failed (1 h)", "Done (1 h)"].map((t, i) => h("th", { class: i > 2 ? "num" : null }, t)))),
      h("tbody", {}, data.length ? data.map((f) => h("tr", {},
        h("td", {}, h("a", { href: `#/functions/${encodeURIComponent(f.id)}` }, f.id), pausedTag(f.paused, true), h("div", { class: "muted small" }, f.app_id)),
        h("td", {}, f.triggers.map((t) => h("div", { class: "mono small" }, t.event ? t.event + (t.expression ? ` if ${t.expression}` : "") : `cron ${t.cron}`))),
        h("td", { class: "small" }, configSummary(f.config)),
        ...["queued", "running", "sleeping", "waiting"].map((k) => h("td", { class: "num" }, f.counts[k] || "·")),
        h("td", { class: "num" + (f.counts.failed_last_hour ? " bad" : "") }, f.counts.failed_last_hour || "·"),
        h("td", { class: "num" }, f.counts.completed_last_hour || "·"),
      )) : h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No functions registered. Start a worker with your app: stepline dev myapp:app"))),
    );
  }
  const gen = generation;
  try { await load(); } catch (e) { return setPage("Functions", errorBox(e)); }
  if (gen !== generation) return;
  setPage("Functions", table);
  every(3, () => load().catch(() => {}));
}

// --- runs ----------------------------------------------------------------------------

async function runsPage(params) {
  const filters = {
    function_id: params.get("function_id") || "", status: params.get("status") || "",
    user_id: params.get("user_id") || "", since: params.get("since") || "", until: params.get("until") || "",
  };
  const cursor = params.get("cursor") || "";
  let functions = [];
  const gen = generation;
  try { functions = (await api("/api/v1/functions")).data; } catch (e) { return setPage("Runs", errorBox(e)); }

  const field = (name, el) => h("label", {}, name, el);
  const form = h("form", { class: "filters", "data-testid": "run-filters", onsubmit: (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
    location.hash = `#/runs?${q}`;
  } },
    field("Function", h("select", { name: "function_id" }, h("option", { value: "" }, "any"),
      functions.map((f) => h("option", { value: f.id, selected: f.id === filters.function_id }, f.id)))),
    field("Status", h("select", { name: "status" }, h("option", { value: "" }, "any"),
      STATUSES.map((st) => h("option", { value: st, selected: st === filters.status }, st)))),
    field("User", h("input", { name: "user_id", value: filters.user_id, placeholder: "user id", size: 12 })),
    field("Since", h("input", { name: "since", value: filters.since, placeholder: "2026-01-31T00:00Z", size: 18 })),
    field("Until", h("input", { name: "until", value: filters.until, placeholder: "ISO time or epoch ms", size: 18 })),
    h("button", { type: "submit", class: "primary" }, "Filter"),
    h("a", { href: "#/runs", class: "button" }, "Clear"),
  );
  const live = h("span", { class: "live", title: "refreshes every 2 s" }, cursor ? "" : "● live");
  const table = h("table", { class: "grid", "data-testid": "runs" });
  const pager = h("div", { class: "pager" });
  const tools = h("div", { class: "tools" });
  if (filters.function_id) {
    tools.append(h("button", { class: "danger", "data-testid": "bulk-cancel", onclick: async () => {
      const scope = `${filters.function_id}${filters.since ? " since " + filters.since : ""}${filters.until ? " until " + filters.until : ""}`;
      if (!confirm(`Cancel every unfinished run of ${scope}?`)) return;
      try {
        const body = { function_id: filters.function_id };
        if (filters.since) body.since = filters.since;
        if (filters.until) body.until = filters.until;
        const r = await api("/api/v1/runs/bulk-cancel", { method: "POST", body: JSON.stringify(body) });
        toast(`Cancelled ${r.cancelled} run(s)`);
        load();
      } catch (e) { toast(e.message, true); }
    } }, "Cancel matching unfinished runs"));
  }

  async function load() {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    if (cursor) q.set("cursor", cursor);
    const { data, next_cursor } = await api(`/api/v1/runs?${q}`);
    table.replaceChildren(
      h("thead", {}, h("tr", {}, ["Run", "Function", "Status", "Progress", "User", "Created", "Duration"].map((t) => h("th", { class: t === "Duration" ? "num" : null }, t)))),
      h("tbody", {}, data.length ? data.map((r) => h("tr", { "data-run": r.id },
        h("td", { class: "mono" }, h("a", { href: `#/runs/${r.id}`, title: r.id }, short(r.id)), r.replay_of ? h("span", { class: "muted small", title: `replay of ${r.replay_of}` }, " ↻") : ""),
        h("td", {}, r.function_id),
        h("td", {}, badge(r.status), r.wait_reason && !TERMINAL.includes(r.status) ? h("span", { class: "muted small" }, ` ${r.wait_reason}`) : ""),
        h("td", {}, progress(r)),
        h("td", { class: "mono small" }, r.user_id || "—"),
        h("td", {}, when(r.created_at)),
        h("td", { class: "num" }, ms(r.duration_ms)),
      )) : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No runs match. Send an event from the Events page.")))
    );
    q.delete("cursor");
    pager.replaceChildren(
      cursor ? h("a", { href: `#/runs?${q}`, class: "button" }, "← Newest") : "",
      next_cursor ? h("a", { href: `#/runs?${q}&cursor=${encodeURIComponent(next_cursor)}`, class: "button" }, "Older →") : "",
    );
  }
  try { await load(); } catch (e) { return setPage("Runs", form, errorBox(e)); }
  if (gen !== generation) return;
  setPage("Runs", form, h("div", { class: "row" }, live, tools), table, pager);
  if (!cursor) every(2, () => load().catch(() => {}));
}

// --- one run -------------------------------------------------------------------------

// A step as people know it: its key ("fetch-page:1"), or its name when the key is an id
// nobody reads (an Inngest SDK step's hash).
function stepLabel(st) {
  const name = st.name || st.id;
  return st.id === name || st.id.split(":")[0] === name ? st.id : name;
}

function timeline(run) {
  const start = Date.parse(run.started_at || run.created_at);
  const stepsEnd = run.steps.map((st) => Date.parse(st.ended_at || st.started_at || 0));
  const end = Math.max(Date.parse(run.ended_at || 0) || 0, ...stepsEnd, start + 1);
  const span = Math.max(1, end - start);
  const render = (st) => {
    // A step reused from an earlier run ran before this one started: pin it to the start.
    const a = Math.max(start, Date.parse(st.started_at || run.started_at || run.created_at));
    const b = Math.max(a, Date.parse(st.ended_at || st.started_at || run.created_at));
    const left = Math.max(0, ((a - start) / span) * 100);
    const width = Math.max(0.6, ((b - a) / span) * 100);
    const reused = st.meta && st.meta.reused_from;
    const usage = stepUsage(run, st);
    const details = h("details", { class: "step", "data-key": st.id },
      h("summary", {},
        h("span", { class: "step-name mono", title: st.id }, stepLabel(st),
          reused ? h("span", { class: "tag", title: `result reused from run ${st.meta.reused_from}` }, "reused") : ""),
        h("span", { class: "muted small" }, st.kind, usage ? h("span", { class: "tag", "data-testid": "step-usage", title: usageLine(usage) }, `${tokens(usage.total_tokens)} tok · ${usd(usage.cost_usd)}`) : ""),
        h("span", { class: "track" }, h("span", { class: `seg ${st.status}`, style: `left:${left}%;width:${Math.min(width, 100 - left)}%` })),
        badge(st.status),
        h("span", { class: "num small" }, `${st.attempts} att.`),
        h("span", { class: "num small" }, ms(st.duration_ms)),
      ),
      st.wake_at && !["completed", "failed"].includes(st.status) ? h("p", { class: "small" }, `Wakes at ${new Date(st.wake_at).toISOString()}`) : "",
      st.error ? h("div", { class: "errbox" }, h("strong", {}, `${st.error.name || "Error"}: `), st.error.message || "", st.error.stack ? h("pre", { class: "stack" }, st.error.stack) : "") : "",
      usage ? h("p", { class: "small" }, h("span", { class: "label" }, "Model call "), usageLine(usage), usage.latency_ms !== null ? ` · ${ms(usage.latency_ms)}` : "") : "",
      st.output !== null && st.output !== undefined ? h("div", {}, h("div", { class: "label" }, "Output"), json(st.output)) : "",
      st.attempt_history.length ? attemptsTable(st.attempt_history) : "",
    );
    return details;
  };
  // A step used many times (a loop) is one collapsible group of its occurrences.
  const rows = stepGroups(run.steps).map(({ base, members }) => members.length > 1 ? groupSummary(base, members, span, start, render) : render(members[0]));
  return h("div", { class: "timeline", "data-testid": "timeline" },
    rows.length ? rows : h("p", { class: "muted" }, "No steps yet."));
}

function budgetWaitText(b) {
  // A run paused on a cost budget: which budget and key, where it stands, and until when.
  const spent = b.limit_usd !== null ? `${money(b.spent_usd)} of ${money(b.limit_usd)}` : `${b.spent_tokens} of ${b.limit_tokens} tokens`;
  const need = b.limit_usd !== null ? money(b.call_usd) : `${b.call_tokens} tokens`;
  return `Not running now: budget exceeded (budget ${b.budget} for key ${b.key} has spent ${spent}; step ${b.step} may cost up to ${need}) ` +
    `until ${new Date(b.period_end).toISOString().replace("T", " ").slice(0, 16)} UTC, or until the limit is raised`;
}

function waitText(run) {
  // Why a run that has not ended is not executing, with the step and time it waits on.
  if (run.budget) return budgetWaitText(run.budget);
  const reason = run.wait_reason.replaceAll("_", " ");
  const held = run.steps.find((st) => ["sleeping", "waiting", "invoking", "retrying"].includes(st.status));
  if (!held) return `Not running now: ${reason}`;
  const until = held.wake_at ? ` until ${new Date(held.wake_at).toLocaleTimeString()}` : "";
  const verb = { sleeping: "sleeping in", waiting: "waiting for an event in", invoking: "waiting for an invoked run in", retrying: "waiting to retry" }[held.status];
  return `Not running now: ${reason} (${verb} step ${stepLabel(held)}${until})`;
}

async function runPage(runId) {
  let run;
  const gen = generation;
  try { run = await api(`/api/v1/runs/${encodeURIComponent(runId)}`); } catch (e) { return setPage("Run", errorBox(e)); }
  if (gen !== generation) return;
  const head = h("div", { class: "card runhead" });
  const actions = h("div", { class: "actions" });
  const body = h("div", {});
  const messages = h("ol", { class: "messages", "data-testid": "messages", "data-empty": "Nothing published yet (ctx.publish)." });
  const messagesHidden = h("p", { class: "muted small", "data-testid": "messages-hidden" });

  async function act(path, label) {
    try {
      const r = await api(`/api/v1/runs/${run.id}/${path}`, { method: "POST" });
      if (r.id && r.id !== run.id) { toast(`${label}: new run ${short(r.id)}`); location.hash = `#/runs/${r.id}`; }
      else { toast(`${label}: ${r.status}`); refresh(); }
    } catch (e) { toast(e.message, true); }
  }

  function render() {
    const ended = TERMINAL.includes(run.status);
    head.replaceChildren(
      h("div", { class: "row" },
        h("div", {}, h("div", { class: "label" }, "Status"), h("div", { "data-testid": "run-status" }, badge(run.status))),
        h("div", {}, h("div", { class: "label" }, "Function"), h("a", { href: `#/functions/${encodeURIComponent(run.function_id)}` }, run.function_id)),
        h("div", {}, h("div", { class: "label" }, "Event"), run.event ? h("a", { href: `#/events/${run.event_id}` }, run.event.name) : run.event_id),
        h("div", {}, h("div", { class: "label" }, "Created"), when(run.created_at)),
        h("div", {}, h("div", { class: "label" }, "Duration"), ms(run.duration_ms)),
        h("div", {}, h("div", { class: "label" }, "User"), run.user_id || "—"),
        run.usage && run.usage.calls ? h("div", {}, h("div", { class: "label" }, "Model calls"),
          h("span", { "data-testid": "run-usage" }, `${run.usage.calls} · ${run.usage.total_tokens} tokens · ${usd(run.usage.cost_usd)}`)) : "",
        run.replay_of ? h("div", {}, h("div", { class: "label" }, "Replay of"), h("a", { href: `#/runs/${run.replay_of}` }, short(run.replay_of))) : "",
      ),
      !ended && run.wait_reason ? h("p", { class: "wait", "data-testid": "wait-reason" }, waitText(run)) : "",
      run.status === "queued" && run.schedule && run.schedule.due_at && Date.parse(run.schedule.due_at) > Date.now() ? h("p", { class: "small", "data-testid": "starts-at" }, "Due to start ", clock(run.schedule.due_at), " (", when(run.schedule.due_at), ")") : "",
      runLinks(run),
      run.progress !== null ? h("div", { class: "progress-line" }, progress(run), h("span", { class: "muted" }, run.progress_message || "")) : "",
    );
    if (actions.dataset.status === run.status) return renderBody();
    actions.dataset.status = run.status;
    actions.replaceChildren(
      !ended ? h("button", { class: "danger", "data-testid": "cancel", onclick: () => act("cancel", "Cancel") }, "Cancel") : "",
      h("button", { "data-testid": "replay", onclick: () => act("replay", "Replay") }, "Replay"),
      ["failed", "cancelled"].includes(run.status) ? h("button", { "data-testid": "rerun", title: "a new run that reuses the completed steps", onclick: () => act("rerun-from-failed-step", "Rerun") }, "Rerun from failed step") : "",
    );
    renderBody();
  }

  function renderBody() {
    const open = new Set([...body.querySelectorAll("details[open][data-key]")].map((d) => d.dataset.key));
    const closed = new Set([...body.querySelectorAll("details[data-key]:not([open])")].map((d) => d.dataset.key));
    body.replaceChildren(
      h("h2", {}, "Steps"), timeline(run),
      run.error ? h("div", {}, h("h2", {}, "Error"), h("div", { class: "errbox", "data-testid": "run-error" }, h("strong", {}, `${run.error.name || "Error"}: `), run.error.message || "", run.error.stack ? h("pre", { class: "stack" }, run.error.stack) : "")) : "",
      run.output !== null && run.output !== undefined ? h("div", {}, h("h2", {}, "Output"), h("div", { "data-testid": "run-output" }, json(run.output))) : "",
      h("h2", {}, "Published messages"), messagesHidden, messages,
      run.function_attempts && run.function_attempts.length ? h("div", {}, h("h2", {}, "Function retries"), json(run.function_attempts)) : "",
      h("h2", {}, "Event"), json(run.event),
    );
    for (const d of body.querySelectorAll("details[data-key]")) {
      if (open.has(d.dataset.key)) d.open = true;
      else if (closed.has(d.dataset.key)) d.open = false;
    }
  }

  let shown = JSON.stringify(run);
  async function refresh() {
    try {
      const next = await api(`/api/v1/runs/${run.id}`);
      const text = JSON.stringify(next);
      if (text === shown) return;  // unchanged: keep the DOM (and any open step details) as it is
      run = next; shown = text; render();
    } catch (e) { /* keep the last view */ }
  }

  setPage(`Run ${short(run.id)}`, h("div", { class: "row between" }, h("span", { class: "mono muted" }, run.id), actions), head, body);
  render();

  // Live: the run's stream (status, progress, messages) drives refreshes of the detail.
  const es = new EventSource(`/api/v1/runs/${run.id}/stream`);
  let pending = null;
  const soon = () => { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 150); };
  // A run may publish thousands of messages (a model's tokens) of up to 512 KiB each: the page
  // keeps the newest SHOWN_MESSAGES, each cut at SHOWN_CHARS, so it stays light however long the run.
  let hidden = 0;
  es.addEventListener("message", (ev) => {
    const m = JSON.parse(ev.data);
    let text = JSON.stringify(m.data);
    if (text.length > SHOWN_CHARS) text = `${text.slice(0, SHOWN_CHARS)}… (${text.length.toLocaleString()} characters in all)`;
    messages.append(h("li", {}, h("span", { class: "mono small muted" }, `#${m.seq} ${m.topic} `), text));
    while (messages.children.length > SHOWN_MESSAGES) { messages.firstElementChild.remove(); hidden += 1; }
    messagesHidden.textContent = hidden ? `${hidden.toLocaleString()} earlier messages not shown (the newest ${SHOWN_MESSAGES} are)` : "";
  });
  es.addEventListener("status", soon);
  es.addEventListener("end", () => { es.close(); refresh(); });
  cleanup.push(() => es.close(), () => clearTimeout(pending));
  every(5, refresh);  // steps can change without a status change (a retry's attempt)
}

// --- events --------------------------------------------------------------------------

function outcome(e) {
  if (e.runs.length) return e.runs.map((r) => h("div", { class: "started" },
    h("a", { href: `#/runs/${r.id}` }, r.function_id), " ", badge(r.status)));
  const skipped = Object.entries(e.skipped || {});
  if (skipped.length) return h("span", { class: "muted" }, skipped.map(([f, why]) => `${f}: ${typeof why === "string" ? why : why.reason || "skipped"}`).join(", "));
  return h("span", { class: "muted" }, "no runs");
}

async function eventsPage() {
  const form = h("form", { class: "card send", "data-testid": "send-event", onsubmit: async (ev) => {
    ev.preventDefault();
    let data;
    const fields = form.elements;
    try { data = JSON.parse(fields.namedItem("data").value || "{}"); } catch (e) { return toast(`data is not valid JSON: ${e.message}`, true); }
    try {
      const r = await api("/api/v1/events", { method: "POST", body: JSON.stringify({ name: fields.namedItem("name").value, data }) });
      const id = r.ids[0];
      result.replaceChildren("Sent ", h("a", { href: `#/events/${id}`, "data-testid": "sent-event" }, id), ".");
      toast("Event sent");
      load();
    } catch (e) { toast(e.message, true); }
  } },
    h("h2", {}, "Send a test event"),
    h("label", {}, "Name", h("input", { name: "name", required: true, placeholder: "llm/generate.requested", size: 34, list: "event-names" })),
    h("datalist", { id: "event-names" }),
    h("label", { class: "grow" }, "Data (JSON)", h("textarea", { name: "data", rows: 3 }, '{"user_id": "u1", "prompt": "hello"}')),
    h("button", { type: "submit", class: "primary" }, "Send event"),
  );
  const result = h("p", { class: "result" });
  const table = h("table", { class: "grid", "data-testid": "events" });
  const gen = generation;
  try {
    const fns = (await api("/api/v1/functions")).data;
    form.querySelector("datalist").append(...fns.flatMap((f) => f.triggers.filter((t) => t.event).map((t) => h("option", { value: t.event }))));
  } catch (e) { return setPage("Events", errorBox(e)); }
  async function load() {
    const { data } = await api("/api/v1/events?limit=50");
    table.replaceChildren(
      h("thead", {}, h("tr", {}, ["Event", "Name", "User", "Received", "Runs"].map((t) => h("th", {}, t)))),
      h("tbody", {}, data.length ? data.map((e) => h("tr", {},
        h("td", { class: "mono" }, h("a", { href: `#/events/${e.id}` }, short(e.id))),
        h("td", { class: "mono" }, e.name), h("td", { class: "mono small" }, e.user_id || "—"),
        h("td", {}, when(e.received_at)), h("td", {}, outcome(e)),
      )) : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No events yet."))),
    );
  }
  await load().catch(() => {});
  if (gen !== generation) return;
  setPage("Events", form, result, table);
  every(3, () => load().catch(() => {}));
}

async function eventPage(eventId) {
  let e;
  const gen = generation;
  try { e = await api(`/api/v1/events/${encodeURIComponent(eventId)}`); } catch (err) { return setPage("Event", errorBox(err)); }
  if (gen !== generation) return;
  const runs = h("table", { class: "grid", "data-testid": "event-runs" },
    h("thead", {}, h("tr", {}, ["Run", "Function", "Status", "Progress"].map((t) => h("th", {}, t)))),
    h("tbody", {}, e.runs.map((r) => h("tr", {},
      h("td", { class: "mono" }, h("a", { href: `#/runs/${r.id}` }, short(r.id))), h("td", {}, r.function_id),
      h("td", {}, badge(r.status)), h("td", {}, progress(r))))));
  const cancelled = (e.cancelled_runs || []).length ? h("div", {}, h("h2", {}, "Runs it cancelled"), h("table", { class: "grid", "data-testid": "cancelled-runs" },
    h("tbody", {}, e.cancelled_runs.map((r) => h("tr", {}, h("td", {}, runLink(r)), h("td", {}, r.function_id), h("td", {}, badge(r.status)), h("td", {}, when(r.ended_at))))))) : "";
  const [resend, resendBox] = resendForm(e);
  setPage(`Event ${e.name}`,
    h("div", { class: "row between" }, h("p", { class: "mono muted" }, e.id, " · received ", when(e.received_at)), resend),
    resendBox,
    h("h2", {}, "Runs started"), e.runs.length ? runs : h("p", { class: "wait", "data-testid": "why-no-runs" }, `No runs: ${e.why_no_runs}`),
    cancelled,
    e.skipped_functions.length ? h("div", {}, h("h2", {}, "Skipped"), h("ul", {}, e.skipped_functions.map((o) => h("li", {}, h("strong", {}, o.function_id), `: ${o.reason}`)))) : "",
    h("h2", {}, "Body"), json(e.body));
  if (e.runs.some((r) => !TERMINAL.includes(r.status))) every(2, () => { if (location.hash === `#/events/${eventId}` && resendBox.hidden) route(); });
}

// --- metrics -------------------------------------------------------------------------

function barChart(rows, { label, value, format = (v) => v, color = "var(--accent)", testid, max }) {
  if (!rows.length) return h("p", { class: "muted" }, "No data in this window.");
  const width = 560, rowH = 26, left = 150, pad = 70;
  const top = max || Math.max(...rows.map(value), 1e-9);
  const svg = s("svg", { viewBox: `0 0 ${width} ${rows.length * rowH + 6}`, class: "chart", role: "img", "data-testid": testid || "" });
  rows.forEach((r, i) => {
    const v = value(r) || 0;
    const w = Math.max(1, ((width - left - pad) * v) / top);
    const y = i * rowH + 4;
    svg.append(
      s("text", { x: left - 8, y: y + 15, "text-anchor": "end", class: "axis" }, label(r)),
      s("rect", { x: left, y, width: w, height: rowH - 8, rx: 3, fill: color }),
      s("text", { x: left + w + 6, y: y + 15, class: "val" }, format(v)),
    );
  });
  return svg;
}

function columnChart(rows, { label, value, format, color = "var(--accent)", testid }) {
  if (!rows.length) return h("p", { class: "muted" }, "No model calls recorded in this period.");
  const width = 560, height = 180, bottom = 26, top = 18;
  const peak = Math.max(...rows.map(value), 1e-9);
  const step = width / rows.length;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "data-testid": testid || "" });
  rows.forEach((r, i) => {
    const v = value(r) || 0;
    const bh = ((height - bottom - top) * v) / peak;
    const x = i * step + step * 0.15;
    svg.append(
      s("rect", { x, y: height - bottom - bh, width: step * 0.7, height: Math.max(1, bh), rx: 2, fill: color }, s("title", {}, `${label(r)}: ${format(v)}`)),
      s("text", { x: x + step * 0.35, y: height - 8, "text-anchor": "middle", class: "axis" }, label(r)),
      s("text", { x: x + step * 0.35, y: height - bottom - bh - 4, "text-anchor": "middle", class: "val" }, format(v)),
    );
  });
  return svg;
}

async function metricsPage(params) {
  const windowValue = params.get("window") || "1h";
  const picker = h("select", { onchange: (ev) => { location.hash = `#/metrics?window=${ev.target.value}`; } },
    ["15m", "1h", "6h", "24h", "7d", "30d"].map((w) => h("option", { value: w, selected: w === windowValue }, `last ${w}`)));
  const body = h("div", {});
  async function load() {
    const m = await api(`/api/v1/metrics?window=${encodeURIComponent(windowValue)}&days=14`);
    const card = (title, value, testid) => h("div", { class: "card stat" }, h("div", { class: "label" }, title), h("div", { class: "big", "data-testid": testid }, value));
    const totalCost = m.usage_by_day.reduce((a, d) => a + d.cost_usd, 0);
    body.replaceChildren(
      h("div", { class: "stats" },
        card("Ready in queue", m.queue_total.ready, "queue-ready"), card("Scheduled", m.queue_total.scheduled, "queue-scheduled"),
        card("Running", m.running, "running"), card(`Cost, ${m.days} days`, usd(totalCost), "cost-total")),
      h("div", { class: "charts" },
        h("section", { class: "card" }, h("h2", {}, "Queue depth per function"),
          barChart(m.queue, { label: (r) => r.function_id, value: (r) => r.ready + r.scheduled + r.leased, testid: "chart-queue",
            format: (v) => String(v) })),
        h("section", { class: "card" }, h("h2", {}, `Success rate, last ${windowValue}`),
          barChart(m.functions.filter((f) => f.success_rate !== null), { label: (r) => r.function_id, value: (r) => r.success_rate, max: 1,
            format: (v) => `${(v * 100).toFixed(1)}%`, color: "var(--ok)", testid: "chart-success" })),
        h("section", { class: "card" }, h("h2", {}, `Runs by outcome, last ${windowValue}`),
          m.functions.length ? h("table", { class: "grid small", "data-testid": "outcomes" },
            h("thead", {}, h("tr", {}, ["Function", "Completed", "Failed", "Cancelled", "Running"].map((t, i) => h("th", { class: i ? "num" : null }, t)))),
            h("tbody", {}, m.functions.map((f) => h("tr", {}, h("td", {}, h("a", { href: `#/functions/${encodeURIComponent(f.function_id)}` }, f.function_id)),
              h("td", { class: "num" }, f.completed), h("td", { class: "num" + (f.failed ? " bad" : "") }, f.failed),
              h("td", { class: "num" }, f.cancelled), h("td", { class: "num" }, f.running)))))
            : h("p", { class: "muted" }, "No runs ended in this window.")),
        h("section", { class: "card" }, h("h2", {}, `Duration p50 / p95, last ${windowValue}`),
          barChart(m.functions.filter((f) => f.p95_ms !== null).flatMap((f) => [
            { name: `${f.function_id} p50`, v: f.p50_ms }, { name: `${f.function_id} p95`, v: f.p95_ms }]),
            { label: (r) => r.name, value: (r) => r.v, format: ms, color: "var(--accent2)", testid: "chart-durations" })),
        h("section", { class: "card" }, h("h2", {}, "Model cost per day (UTC)"),
          columnChart(m.usage_by_day, { label: (r) => r.day.slice(5), value: (r) => r.cost_usd, format: usd, color: "var(--warn)", testid: "chart-cost" })),
        h("section", { class: "card" }, h("h2", {}, "Tokens per day"),
          columnChart(m.usage_by_day, { label: (r) => r.day.slice(5), value: (r) => r.total_tokens, format: (v) => v >= 1000 ? `${(v / 1000).toFixed(1)}k` : String(v), testid: "chart-tokens" })),
        h("section", { class: "card" }, h("h2", {}, "Cost per model"),
          (m.usage_by_model || []).length ? h("table", { class: "grid small", "data-testid": "usage-by-model" },
            h("thead", {}, h("tr", {}, ["Model", "Provider", "Calls", "Tokens", "Cost"].map((t) => h("th", {}, t)))),
            h("tbody", {}, [...m.usage_by_model].sort((a, b) => b.cost_usd - a.cost_usd).slice(0, 12).map((u) => h("tr", {},
              h("td", { class: "mono" }, u.model), h("td", {}, u.provider || "—"), h("td", { class: "num" }, u.calls),
              h("td", { class: "num" }, u.total_tokens), h("td", { class: "num" }, usd(u.cost_usd))))))
            : h("p", { class: "muted" }, "No model calls recorded in this period.")),
        h("section", { class: "card" }, h("h2", {}, "Cost per user"),
          m.usage_by_user.length ? h("table", { class: "grid small" },
            h("thead", {}, h("tr", {}, ["User", "Calls", "Tokens", "Cost"].map((t) => h("th", {}, t)))),
            h("tbody", {}, m.usage_by_user.slice(0, 12).map((u) => h("tr", {}, h("td", { class: "mono" }, u.user_id || "—"),
              h("td", { class: "num" }, u.calls), h("td", { class: "num" }, u.total_tokens), h("td", { class: "num" }, usd(u.cost_usd))))))
            : h("p", { class: "muted" }, "No model calls recorded in this period.")),
      ),
    );
  }
  const gen = generation;
  try { await load(); } catch (e) { return setPage("Metrics", errorBox(e)); }
  if (gen !== generation) return;
  setPage("Metrics", h("div", { class: "row" }, picker, h("span", { class: "live" }, "● live")), body);
  every(5, () => load().catch(() => {}));
}

// --- budgets -------------------------------------------------------------------------

function spendCell(k) {
  // Spent (and reserved by calls in flight) against the limit, as a bar and as text.
  const byUsd = k.limit_usd !== null;
  const spent = byUsd ? k.spent_usd : k.spent_tokens;
  const reserved = byUsd ? k.reserved_usd : k.reserved_tokens;
  const limit = byUsd ? k.limit_usd : k.limit_tokens;
  const fmt = byUsd ? money : (v) => `${v} tok`;
  const pct = limit ? Math.min(100, ((spent + reserved) / limit) * 100) : 0;
  return h("div", { class: "spend" },
    h("div", { class: "progress", title: `${fmt(spent)} spent, ${fmt(reserved)} reserved` },
      h("div", { class: `bar${pct >= 100 ? " full" : ""}`, style: `width:${pct}%` })),
    h("span", { class: "small" }, `${fmt(spent)} of ${limit === null ? "no limit" : fmt(limit)}`,
      reserved ? h("span", { class: "muted" }, ` (+${fmt(reserved)} in flight)`) : ""));
}

function periodLabel(p) {
  if (typeof p !== "number") return p;  // "month"
  for (const [unit, s] of [["d", 86400], ["h", 3600], ["m", 60]]) if (p % s === 0) return `${p / s}${unit}`;
  return `${p}s`;
}

function limitCell(k) {
  const parts = [];
  if (k.limit_usd !== null) parts.push(money(k.limit_usd));
  if (k.limit_tokens !== null) parts.push(`${k.limit_tokens} tokens`);
  return h("span", {}, parts.join(" + ") || "none", k.override ? h("span", { class: "tag", title: "set by an operator" }, "override") : "");
}

async function budgetsPage(params) {
  const only = params.get("budget") || "";
  const declared = h("div", { "data-testid": "declared-budgets" });
  const table = h("table", { class: "grid", "data-testid": "budgets" });
  const form = h("form", { class: "card send", "data-testid": "budget-override", onsubmit: async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    const num = (name, parse) => f.namedItem(name).value.trim() === "" ? null : parse(f.namedItem(name).value);
    const body = { limit_usd: num("limit_usd", Number), limit_tokens: num("limit_tokens", (v) => parseInt(v, 10)) };
    const path = `/api/v1/budgets/${encodeURIComponent(f.namedItem("budget").value)}/${encodeURIComponent(f.namedItem("key").value)}`;
    try {
      const r = await api(path, { method: "PUT", body: JSON.stringify(body) });
      toast(r.resumed_runs.length ? `Limit set; ${r.resumed_runs.length} paused run(s) resumed` : "Limit set");
      load();
    } catch (e) { toast(e.message, true); }
  } },
    h("h2", {}, "Set one key's limit"),
    h("label", {}, "Budget", h("select", { name: "budget", required: true })),
    h("label", {}, "Key", h("input", { name: "key", required: true, placeholder: "user id, or * without a key", size: 18 })),
    h("label", {}, "Limit (USD)", h("input", { name: "limit_usd", type: "number", min: "0", step: "any", size: 8 })),
    h("label", {}, "Limit (tokens)", h("input", { name: "limit_tokens", type: "number", min: "1", step: "1", size: 10 })),
    h("button", { type: "submit", class: "primary" }, "Set limit"),
    h("span", { class: "muted small" }, "Both empty: back to the declared limits. Paused runs of the key resume at once."),
  );

  function pick(k) {
    form.elements.namedItem("budget").value = k.budget;
    form.elements.namedItem("key").value = k.key;
    form.elements.namedItem("limit_usd").value = k.limit_usd === null ? "" : k.limit_usd;
    form.elements.namedItem("limit_tokens").value = k.limit_tokens === null ? "" : k.limit_tokens;
    form.scrollIntoView({ behavior: "smooth" });
  }

  async function load() {
    const b = await api(`/api/v1/budgets${only ? `?budget=${encodeURIComponent(only)}` : ""}`);
    const select = form.elements.namedItem("budget");
    if (!select.options.length) select.append(...b.budgets.map((d) => h("option", { value: d.name }, d.name)));
    declared.replaceChildren(b.budgets.length ? h("ul", { class: "small" }, b.budgets.map((d) => h("li", {},
      h("strong", { class: "mono" }, d.name), ` — ${d.scope} budget per ${d.key || "everything"}, `,
      [d.limit_usd !== null ? (typeof d.limit_usd === "string" ? `limit_usd ${d.limit_usd}` : money(d.limit_usd)) : "",
       d.limit_tokens !== null ? `${d.limit_tokens} tokens` : ""].filter(Boolean).join(" + "),
      ` per ${periodLabel(d.period)}, on exceeded ${d.on_exceeded} (${d.functions.join(", ")})`)))
      : h("p", { class: "muted" }, "No budgets declared. Give a function budgets=[stepline.Budget(limit_usd=5.0, period=\"1d\", key=\"event.data.user_id\")]."));
    table.replaceChildren(
      h("thead", {}, h("tr", {}, ["Budget", "Key", "Spent this period", "Limit", "Period ends (UTC)", "Paused runs", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, b.data.length ? b.data.map((k) => h("tr", { "data-budget-key": `${k.budget}/${k.key}` },
        h("td", { class: "mono" }, h("a", { href: `#/budgets?budget=${encodeURIComponent(k.budget)}` }, k.budget)),
        h("td", { class: "mono" }, k.key),
        h("td", {}, spendCell(k), k.exceeded ? h("span", { class: "tag bad", title: "refused a call this period" }, "exceeded") : ""),
        h("td", {}, limitCell(k)),
        h("td", { class: "small" }, new Date(k.period_end).toISOString().replace("T", " ").slice(0, 16)),
        h("td", { class: "num" + (k.paused_runs ? " bad" : "") }, k.paused_runs || "·"),
        h("td", {}, h("button", { class: "link", onclick: () => pick(k) }, "Set limit…")),
      )) : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No key has spent anything this period."))),
    );
  }
  const gen = generation;
  try { await load(); } catch (e) { return setPage("Budgets", errorBox(e)); }
  if (gen !== generation) return;
  setPage("Budgets", declared, h("div", { class: "row" }, h("span", { class: "live" }, "● live"),
    only ? h("a", { href: "#/budgets", class: "button" }, "All budgets") : ""), table, form);
  every(3, () => load().catch(() => {}));
}

// --- routing -------------------------------------------------------------------------

async function route() {
  for (const fn of cleanup) fn();
  cleanup = [];
  generation += 1;
  const hash = location.hash.replace(/^#/, "") || "/runs";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === parts[0]);
  if (parts[0] === "functions" && parts[1]) return functionPage(decodeURIComponent(parts[1]), params);
  if (parts[0] === "functions") return functionsPage();
  if (parts[0] === "search") return searchPage(params);
  if (parts[0] === "events" && parts[1]) return eventPage(decodeURIComponent(parts[1]));
  if (parts[0] === "events") return eventsPage();
  if (parts[0] === "metrics") return metricsPage(params);
  if (parts[0] === "budgets") return budgetsPage(params);
  if (parts[0] === "runs" && parts[1]) return runPage(decodeURIComponent(parts[1]));
  return runsPage(params);
}

window.addEventListener("hashchange", route);
document.getElementById("search-slot").replaceWith(searchForm());
fetch("/health").then((r) => r.json()).then((hl) => {
  document.getElementById("db").textContent = `${hl.database}${hl.mode === "dev" ? " · dev mode" : ""}`;
  if (hl.mode === "dev") document.getElementById("logout").hidden = true;
}).catch(() => {});
route();
