// A Node app that uses only the official SDK (no Stepline code), as its users write it.
// STEPLINE_TEST_SDK picks the SDK: "v4" (inngest 4.x, served by node:http) or "v3"
// (inngest 3.x, served by Express). The server it talks to comes from INNGEST_*
// environment variables; PORT is where it listens.
// GET /counts returns what the functions did, so tests can count executions;
// POST /gate/<name> lets a step that waits on that gate finish.
import http from "node:http";

const major = process.env.STEPLINE_TEST_SDK === "v3" ? "v3" : "v4";
const pkg = major === "v3" ? "inngest-v3" : "inngest";
const { Inngest, NonRetriableError, RetryAfterError, referenceFunction } = await import(pkg);

const counts = {};
const seen = {};
const hit = (name, value) => {
  counts[name] = (counts[name] || 0) + 1;
  if (value !== undefined) seen[name] = value;
  return counts[name];
};
const append = (name, value) => { (seen[name] ||= []).push(value); };

const gates = {};
const gateOf = (name) => {
  if (!gates[name]) {
    let open;
    gates[name] = { promise: new Promise((resolve) => { open = resolve; }), open };
  }
  return gates[name];
};
const gate = (name) => gateOf(name).promise;

const inngest = new Inngest({ id: "ts-app" });

// One way to declare a function for both SDKs: v4 takes the triggers in the options,
// v3 as a second argument.
const fn = (options, trigger, handler) =>
  major === "v3"
    ? inngest.createFunction(options, trigger, handler)
    : inngest.createFunction({ ...options, triggers: [trigger] }, handler);

const steps = fn({ id: "steps" }, { event: "ts/steps" }, async ({ event, step, attempt }) => {
  const name = await step.run("first", () => { hit("steps.first"); return String(event.data.name).toUpperCase(); });
  const greeting = await step.run("second", () => { hit("steps.second"); return `hello ${name}`; });
  return { greeting, attempt };
});

const sleeper = fn({ id: "sleeper" }, { event: "ts/sleep" }, async ({ step }) => {
  const before = await step.run("before", () => hit("sleep.before"));
  await step.sleep("nap", "1s");
  const after = await step.run("after", () => hit("sleep.after"));
  return `${before}-${after}`;
});

const waiter = fn({ id: "waiter" }, { event: "ts/wait" }, async ({ step }) => {
  const got = await step.waitForEvent("approval", { event: "ts/approve", timeout: "2s", match: "data.id" });
  return got === null ? null : { approvedBy: got.data.by, name: got.name };
});

const child = fn({ id: "child" }, { event: "ts/child" }, async ({ event, step }) => {
  const doubled = await step.run("double", () => Number(event.data.n) * 2);
  return { doubled, event: event.name };
});

const parent = fn({ id: "parent" }, { event: "ts/parent" }, async ({ event, step }) => {
  const result = await step.invoke("call-child", { function: child, data: { n: event.data.n } });
  return { child: result };
});

const sender = fn({ id: "sender" }, { event: "ts/send" }, async ({ event, step }) =>
  step.sendEvent("emit", { name: "ts/sent", data: { k: event.data.k } }));

const onSent = fn({ id: "on-sent" }, { event: "ts/sent" }, async ({ event }) => { hit("on-sent", event.data); return event.data; });

const parallel = fn({ id: "parallel" }, { event: "ts/parallel" }, async ({ step }) => {
  const results = await Promise.all([1, 2, 3].map((n) => step.run(`part-${n}`, () => { hit(`parallel.${n}`); return n * 10; })));
  const total = await step.run("sum", () => results.reduce((a, b) => a + b, 0));
  return [...results, total];
});

// One id used again in a loop and in a parallel block: the SDK keys the repeats "item:1", ...
const repeated = fn({ id: "repeated" }, { event: "ts/repeated" }, async ({ step }) => {
  await step.sleepUntil("past", new Date(Date.now() - 60_000));
  const serial = [];
  for (let i = 0; i < 3; i++) serial.push(await step.run("item", () => { hit(`repeated.item.${i}`); return i * 10; }));
  const parallel = await Promise.all([0, 1, 2].map((i) => step.run("part", () => { hit(`repeated.part.${i}`); return `p${i}`; })));
  return { serial, parallel };
});

const flaky = fn({ id: "flaky", retries: 3 }, { event: "ts/flaky" }, async ({ step }) => step.run("unstable", () => {
  const n = hit("flaky");
  if (n < 3) throw new Error(`transient failure ${n}`);
  return `ok after ${n}`;
}));

const nonretry = fn(
  {
    id: "nonretry",
    retries: 3,
    onFailure: async ({ event, error }) => {
      hit("nonretry.onFailure", { name: event.name, message: error.message, user: event.data.event.user ?? null });
    },
  },
  { event: "ts/nonretry" },
  async ({ step }) => step.run("boom", () => { hit("nonretry"); throw new NonRetriableError("permanent failure"); }),
);

const retryAfter = fn({ id: "retry-after", retries: 2 }, { event: "ts/retry-after" }, async ({ step }) => step.run("call", () => {
  const n = hit("retry-after");
  (seen["retry-after.times"] ||= []).push(Date.now() / 1000);
  if (n === 1) throw new RetryAfterError("rate limited", "2s");
  return "done";
}));

const cancellable = fn(
  { id: "cancellable", cancelOn: [{ event: "ts/stop", match: "data.id" }] },
  { event: "ts/long" },
  async ({ step }) => {
    await step.run("start", () => hit("cancellable.start"));
    await step.sleep("long-nap", "30s");
    await step.run("end", () => hit("cancellable.end"));
    return "not cancelled";
  },
);

const throttled = fn(
  { id: "throttled", throttle: { limit: 1, period: "1s", key: "event.data.user" } },
  { event: "ts/throttled" },
  async ({ event, step }) => step.run("record", () => { hit("throttled", true); return { user: event.data.user, at: Date.now() / 1000 }; }),
);

const limited = fn({ id: "limited", concurrency: [{ limit: 1 }] }, { event: "ts/limited" }, async ({ step }) => step.run("work", async () => {
  const start = Date.now() / 1000;
  await new Promise((resolve) => setTimeout(resolve, 300));
  return { start, end: Date.now() / 1000 };
}));

const debounced = fn(
  { id: "debounced", debounce: { period: "1s", key: "event.data.user" } },
  { event: "ts/debounced" },
  async ({ event }) => { hit("debounced", event.data); return event.data; },
);

const asker = fn({ id: "asker" }, { event: "ts/ask" }, async ({ event, step }) => {
  const model = step.ai.models.openai({ model: "fake-model", baseUrl: event.data.baseUrl, apiKey: "test-key" });
  const reply = await step.ai.infer("ask-model", { model, body: { messages: [{ role: "user", content: event.data.q }] } });
  const page = await step.fetch(event.data.fetchUrl);
  return { answer: reply.choices[0].message.content, fetched: page.status, body: await page.text() };
});

// 5 model calls at once, 2 at a time per user: each step executing takes a concurrency slot.
const fanAsk = fn({ id: "fan-ask", concurrency: { limit: 2, key: "event.data.user" } }, { event: "ts/fan-ask" }, async ({ event, step }) => {
  const model = step.ai.models.openai({ model: "fake-model", baseUrl: event.data.baseUrl, apiKey: "test-key" });
  const replies = await Promise.all([0, 1, 2, 3, 4].map((n) => step.ai.infer(`ask-${n}`, { model, body: { messages: [{ role: "user", content: `q${n}` }] } })));
  return replies.map((reply) => reply.choices[0].message.content);
});

// Promise.race with Inngest's early continuation: v4 asks for it with group.parallel's
// race mode; v3 (one step per request, its default) has it for every parallel block.
const racer = fn({ id: "racer" }, { event: "ts/race" }, async ({ step, group }) => {
  const race = () => Promise.race([
    step.run("slow", async () => { await gate("race"); hit("race.slow"); return "slow"; }),
    step.run("fast", () => "fast"),
  ]);
  const winner = major === "v3" ? await race() : await group.parallel({ mode: "race" }, race);
  return step.run("after", () => { hit("race.after"); return `winner: ${winner}`; });
});

const parallelFail = fn({ id: "parallel-fail", retries: 0 }, { event: "ts/parallel-fail" }, async ({ step }) => {
  try {
    await Promise.all([step.run("ok", () => 1), step.run("bad", () => { throw new Error("bad branch"); })]);
    return "no error";
  } catch (err) {
    return `caught ${err.name}: ${err.message}`;
  }
});

const nightly = fn({ id: "nightly" }, { cron: "TZ=Europe/Paris 0 3 * * *" }, async ({ event, step }) =>
  step.run("report", () => ({ event: event.name, id: event.id, cron: event.data.cron, scheduledAt: event.data.scheduledAt })));

const parallelRetry = fn({ id: "parallel-retry", retries: 2 }, { event: "ts/parallel-retry" }, async ({ step }) => {
  const [a, b] = await Promise.all([
    step.run("steady", () => { hit("pr.steady"); return "a"; }),
    step.run("wobbly", () => {
      if (hit("pr.wobbly") === 1) throw new Error("first try fails");
      return "b";
    }),
  ]);
  return step.run("join", () => a + b);
});

const signalWaiter = fn({ id: "signal-waiter" }, { event: "ts/await-signal" }, async ({ event, step }) =>
  step.waitForSignal("approval", { signal: `approve-${event.data.id}`, timeout: "10s" }));

const signalSender = fn({ id: "signal-sender" }, { event: "ts/send-signal" }, async ({ event, step }) =>
  step.sendSignal("approve", { signal: `approve-${event.data.id}`, data: { by: event.data.by } }));

const pinger = fn({ id: "pinger" }, { event: "ts/start-ping" }, async ({ event, step }) => {
  // Send a request and wait for its reply in one parallel block, as Inngest's docs suggest.
  const [, reply] = await Promise.all([
    step.sendEvent("ping", { name: "ts/ping", data: { id: event.data.id } }),
    step.waitForEvent("pong", { event: "ts/pong", timeout: "20s", match: "data.id" }),
  ]);
  return reply === null ? null : reply.data;
});

const ponger = fn({ id: "ponger" }, { event: "ts/ping" }, async ({ event }) => {
  await inngest.send({ name: "ts/pong", data: { id: event.data.id, pong: true } });
  return "sent";
});

// Flow control written the way most TS code writes it: concurrency as an object.
const vipQueue = fn(
  { id: "vip-queue", concurrency: { limit: 1 }, priority: { run: "event.data.vip == true ? 120 : 0" } },
  { event: "ts/vip" },
  async ({ event, step }) => step.run("work", async () => {
    append("vip.order", event.data.name);
    if (event.data.name === "first") await gate("vip");
    return event.data.name;
  }),
);

const perUser = fn({ id: "per-user", concurrency: { limit: 2, key: "event.data.user" } }, { event: "ts/per-user" }, async () => "ok");

const batchIf = fn(
  { id: "batch-if", batchEvents: { maxSize: 3, timeout: "60s", if: "event.data.batch == true" } },
  { event: "ts/batch-if" },
  async ({ events }) => events.map((e) => e.data.n),
);

const twoNaps = fn({ id: "two-naps" }, { event: "ts/naps" }, async ({ step }) => {
  await Promise.all([step.sleep("short-nap", "1s"), step.sleep("long-nap", "2s")]);
  return "awake";
});

const twoWaits = fn({ id: "two-waits" }, { event: "ts/waits" }, async ({ step }) => {
  const [a, b] = await Promise.all([
    step.waitForEvent("wait-a", { event: "ts/a", timeout: "1m", match: "data.id" }),
    step.waitForEvent("wait-b", { event: "ts/b", timeout: "1m", match: "data.id" }),
  ]);
  return [a && a.data.n, b && b.data.n];
});

// A wait raced against a step, and a wait raced against a sleep (a timeout written by hand):
// the function goes on with the winner, the loser does not hold it up.
const raceWait = fn({ id: "race-wait" }, { event: "ts/race-wait" }, async ({ step, group }) => {
  const race = () => Promise.race([
    step.run("quick", () => "quick"),
    step.waitForEvent("never", { event: "ts/never", timeout: "1h" }),
  ]);
  const winner = major === "v3" ? await race() : await group.parallel({ mode: "race" }, race);
  return step.run("after-wait", () => `winner: ${winner}`);
});

const approval = fn({ id: "approval" }, { event: "ts/approval" }, async ({ step }) => {
  const got = await Promise.race([
    step.waitForEvent("approved", { event: "ts/approved", timeout: "1h", match: "data.id" }),
    step.sleep("give-up", "1h"),
  ]);
  return step.run("decide", () => (got ? `approved by ${got.data.by}` : "timed out"));
});

// Errors the server makes itself (an invoke timing out, or of a function nobody registered)
// reach user code with their name and message, as Inngest's do.
const slowChild = fn({ id: "slow-child" }, { event: "ts/slow-child" }, async ({ step }) => {
  await step.sleep("nap", "30s");
  return "late";
});

const invokeErrors = fn({ id: "invoke-errors" }, { event: "ts/invoke-errors" }, async ({ step }) => {
  const caught = (promise) => promise.then(() => null, (err) => ({ name: err.name, message: err.message }));
  const timedOut = await caught(step.invoke("slow", { function: slowChild, data: {}, timeout: "1s" }));
  const missing = await caught(step.invoke("missing", { function: referenceFunction({ functionId: "nope-nothing" }), data: {} }));
  return { timedOut, missing };
});

// Invokes meet the invoked function's flow control: one that starts no run fails at once.
const rateLimited = fn(
  { id: "rate-limited", rateLimit: { limit: 1, period: "1m", key: "event.data.user" } },
  { event: "ts/rate-limited" },
  async ({ event }) => `ran for ${event.data.user}`,
);
const idem = fn({ id: "idem", idempotency: "event.data.key" }, { event: "ts/idem" }, async ({ event }) => `ran for ${event.data.key}`);
const singleSkip = fn(
  { id: "single-skip", singleton: { key: "event.data.k", mode: "skip" } },
  { event: "ts/single-skip" },
  async () => "ran",
);

const flowInvoker = fn({ id: "flow-invoker" }, { event: "ts/flow-invoker" }, async ({ step }) => {
  const settled = (promise) => promise.then((value) => value, (err) => `${err.name}: ${err.message}`);
  const call = (id, function_, data) => settled(step.invoke(id, { function: function_, data }));
  return {
    rateLimited: [await call("rl-1", rateLimited, { user: "u1" }), await call("rl-2", rateLimited, { user: "u1" })],
    idem: [await call("idem-1", idem, { key: "k1" }), await call("idem-2", idem, { key: "k1" })],
    single: await Promise.all([call("single-1", singleSkip, { k: "x" }), call("single-2", singleSkip, { k: "x" })]),
  };
});

// A step that throws something that is not an Error (here nothing at all).
const throwsUndefined = (id, retries) => fn({ id, retries }, { event: `ts/${id}` }, async ({ step }) => {
  return step.run("s", () => { hit(id); throw undefined; });
});

// A run past its finish timeout while it sleeps or waits is cancelled then, not when it wakes.
const finishTimeout = fn({ id: "finish-timeout", timeouts: { finish: "2s" } }, { event: "ts/finish-timeout" }, async ({ event, step }) => {
  if (event.data.wait) await step.waitForEvent("reply", { event: "ts/never-replied", timeout: "1h" });
  else await step.sleep("long", "1h");
  hit("finish-timeout.after");
});

// Functions that hear of other functions' endings.
const onFinished = fn(
  { id: "on-finished" },
  { event: "inngest/function.finished", if: "event.data.function_id == 'ts-app-steps'" },
  async ({ event }) => {
    append("finished", { run_id: event.data.run_id, result: event.data.result, status: event.data._inngest?.status, event: event.data.event?.name });
  },
);

const onCancelled = fn(
  { id: "on-cancelled" },
  { event: "inngest/function.cancelled", if: "event.data.function_id == 'ts-app-cancellable'" },
  async ({ event }) => { append("cancelled", { run_id: event.data.run_id, id: event.data.event?.data?.id }); },
);

// A wildcard over Inngest's own event names hears every ending of the functions it filters on.
const wildTarget = fn({ id: "wild-target", retries: 0 }, { event: "ts/wild-target" }, async ({ event }) => {
  if (event.data.fail) throw new NonRetriableError("failed on purpose");
  return "fine";
});
const wildWatch = fn(
  { id: "wild-watch" },
  { event: "inngest/function.*", if: "event.data.function_id == 'ts-app-wild-target'" },
  async ({ event }) => { append("wild", { name: event.name, run_id: event.data.run_id }); },
);

// Arithmetic with a double on a whole-number field, in a trigger's and a wait's `if`.
const bigOrder = fn(
  { id: "big-order" },
  { event: "ts/order", if: "event.data.total * 1.1 > 100.0" },
  async ({ step }) => {
    const paid = await step.waitForEvent("paid", { event: "ts/order.paid", timeout: "1m", if: "async.data.amount >= event.data.total * 0.5" });
    return paid ? paid.data.amount : null;
  },
);

// A step whose result is over the step output limit: the error names the step as the app does.
const bigStep = fn({ id: "big-step", retries: 0 }, { event: "ts/big-step" }, async ({ step }) => {
  await step.run("make-it-big", () => "x".repeat(4 * 1024 * 1024 + 16));
});

// An invoked run's failure reaches the parent as the child reported it (message, cause), as
// Inngest resumes the invoke with the child's own error; a cancelled child says why.
const declined = fn({ id: "declined", retries: 0 }, { event: "ts/declined" }, async () => {
  const cause = new Error("card_declined: insufficient funds");
  cause.name = "PaymentError";
  throw new NonRetriableError("payment declined", { cause });
});
const stoppable = fn({ id: "stoppable", cancelOn: [{ event: "ts/stoppable.stop", match: "data.order" }] }, { event: "ts/stoppable" }, async ({ step }) => {
  await step.sleep("nap", "1m");
  return "not cancelled";
});
const checkout = fn({ id: "checkout" }, { event: "ts/checkout" }, async ({ event, step }) => {
  const caught = (promise) => promise.then(() => null, (err) => ({
    message: err.message, cause: err.cause ? { name: err.cause.name, message: err.cause.message } : null,
  }));
  const pay = await caught(step.invoke("pay", { function: declined, data: {} }));
  const wait = await caught(step.invoke("wait", { function: stoppable, data: { order: event.data.order } }));
  return { pay, wait };
});

// Inngest's own CEL functions (date, now_minus, lowercase, ...) in a trigger's and a wait's `if`.
const verifyEmail = fn(
  { id: "verify-email" },
  { event: "ts/signup", if: "date(event.data.at) > now_minus('1d')" },
  async ({ step }) => {
    const clicked = await step.waitForEvent("clicked", {
      event: "ts/email.clicked", timeout: "1m", if: "lowercase(async.data.email) == lowercase(event.data.email)",
    });
    return clicked ? `verified ${clicked.data.email}` : "expired";
  },
);

// cancelOn until a moment (a Date: the SDK sends it as an RFC 3339 time), not for a duration.
const cancelUntil = fn(
  { id: "cancel-until", cancelOn: [{ event: "ts/cancel-until.stop", match: "data.id", timeout: new Date("2030-01-01T00:00:00Z") }] },
  { event: "ts/cancel-until" },
  async ({ step }) => { await step.sleep("nap", "1h"); return "not cancelled"; },
);

// defer() (4.x, experimental): Stepline refuses it, failing the run, rather than drop it.
const deferFns = [];
if (major === "v4") {
  const { createDefer } = await import("inngest/experimental");
  const later = createDefer(inngest, { id: "deferred-work" }, async ({ event }) => { hit("deferred.work"); return event.data; });
  deferFns.push(later, fn({ id: "deferrer" }, { event: "ts/defer" }, async ({ step, defer }) => {
    await step.run("before", () => hit("deferrer.before"));
    defer("later", { function: later, data: { n: 1 } });
    await step.run("after", () => hit("deferrer.after"));
    return "done";
  }));
}

// An onFailure handler that throws the first time: TS registers it with one retry.
const failingFailure = fn(
  {
    id: "failing-failure",
    retries: 0,
    onFailure: async () => {
      if (hit("failing-failure.onFailure") === 1) throw new Error("the handler failed once");
    },
  },
  { event: "ts/failing-failure" },
  async () => { throw new NonRetriableError("fails at once"); },
);

const functions = [
  declined, failingFailure, stoppable, checkout, verifyEmail,
  steps, sleeper, waiter, child, parent, sender, onSent, parallel, repeated, flaky, nonretry, retryAfter, cancellable, throttled,
  limited, debounced, asker, fanAsk, racer, parallelFail, nightly, parallelRetry, signalWaiter, signalSender, pinger, ponger,
  vipQueue, perUser, batchIf, twoNaps, twoWaits, onFinished, onCancelled, raceWait, approval, slowChild, invokeErrors,
  rateLimited, idem, singleSkip, flowInvoker, finishTimeout, cancelUntil, ...deferFns,
  throwsUndefined("throw-undefined", 0), throwsUndefined("throw-undefined-retried", 2), bigStep, wildTarget, wildWatch, bigOrder,
];

if (major === "v4") {
  // Realtime (v4): a durable publish step and a plain publish inside a step.
  const { channel, staticSchema } = await import("inngest/realtime");
  const job = channel({ name: (id) => `job:${id}`, topics: { status: { schema: staticSchema() }, tokens: { schema: staticSchema() } } });
  functions.push(fn({ id: "publisher" }, { event: "ts/publish" }, async ({ event, step }) => {
    await step.realtime.publish("publish-status", job(event.data.id).status, { message: "started" });
    await step.run("stream-tokens", async () => {
      for (const token of ["Hel", "lo"]) await inngest.realtime.publish(job(event.data.id).tokens, token);
      return "streamed";
    });
    return "published";
  }));
}

const onRequest = (req, res, next) => {
  if (req.url === "/counts") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ counts, seen }));
    return;
  }
  if (req.method === "POST" && req.url.startsWith("/gate/")) {
    gateOf(req.url.slice("/gate/".length)).open();
    res.writeHead(204);
    res.end();
    return;
  }
  next();
};

let server;
if (major === "v3") {
  const express = (await import("express")).default;
  const { serve } = await import("inngest-v3/express");
  const app = express();
  app.use(express.json({ limit: "10mb" }));
  app.use(onRequest);
  app.use("/api/inngest", serve({ client: inngest, functions }));
  server = http.createServer(app);
} else {
  const { serve } = await import("inngest/node");
  const handler = serve({ client: inngest, functions });
  server = http.createServer((req, res) => onRequest(req, res, () => handler(req, res)));
}
server.listen(Number(process.env.PORT), "127.0.0.1", () => console.log(`listening on ${process.env.PORT} (inngest ${major})`));
