// A plain Node HTTP app that uses only the official SDK (no Stepline code).
// The server it talks to comes from INNGEST_* environment variables; PORT is where it listens.
// GET /counts returns what the functions did, so tests can count executions.
import http from "node:http";
import { Inngest, NonRetriableError, RetryAfterError } from "inngest";
import { serve } from "inngest/node";

const counts = {};
const seen = {};
const hit = (name, value) => {
  counts[name] = (counts[name] || 0) + 1;
  if (value !== undefined) seen[name] = value;
  return counts[name];
};

const inngest = new Inngest({ id: "ts-app" });

const steps = inngest.createFunction(
  { id: "steps", triggers: [{ event: "ts/steps" }] },
  async ({ event, step, attempt }) => {
    const name = await step.run("first", () => { hit("steps.first"); return String(event.data.name).toUpperCase(); });
    const greeting = await step.run("second", () => { hit("steps.second"); return `hello ${name}`; });
    return { greeting, attempt };
  },
);

const sleeper = inngest.createFunction(
  { id: "sleeper", triggers: [{ event: "ts/sleep" }] },
  async ({ step }) => {
    const before = await step.run("before", () => hit("sleep.before"));
    await step.sleep("nap", "1s");
    const after = await step.run("after", () => hit("sleep.after"));
    return `${before}-${after}`;
  },
);

const waiter = inngest.createFunction(
  { id: "waiter", triggers: [{ event: "ts/wait" }] },
  async ({ step }) => {
    const got = await step.waitForEvent("approval", { event: "ts/approve", timeout: "2s", match: "data.id" });
    return got === null ? null : { approvedBy: got.data.by, name: got.name };
  },
);

const child = inngest.createFunction(
  { id: "child", triggers: [{ event: "ts/child" }] },
  async ({ event, step }) => {
    const doubled = await step.run("double", () => Number(event.data.n) * 2);
    return { doubled, event: event.name };
  },
);

const parent = inngest.createFunction(
  { id: "parent", triggers: [{ event: "ts/parent" }] },
  async ({ event, step }) => {
    const result = await step.invoke("call-child", { function: child, data: { n: event.data.n } });
    return { child: result };
  },
);

const sender = inngest.createFunction(
  { id: "sender", triggers: [{ event: "ts/send" }] },
  async ({ event, step }) => step.sendEvent("emit", { name: "ts/sent", data: { k: event.data.k } }),
);

const onSent = inngest.createFunction(
  { id: "on-sent", triggers: [{ event: "ts/sent" }] },
  async ({ event }) => { hit("on-sent", event.data); return event.data; },
);

const parallel = inngest.createFunction(
  { id: "parallel", triggers: [{ event: "ts/parallel" }] },
  async ({ step }) => {
    const results = await Promise.all([1, 2, 3].map((n) => step.run(`part-${n}`, () => { hit(`parallel.${n}`); return n * 10; })));
    const total = await step.run("sum", () => results.reduce((a, b) => a + b, 0));
    return [...results, total];
  },
);

const flaky = inngest.createFunction(
  { id: "flaky", retries: 3, triggers: [{ event: "ts/flaky" }] },
  async ({ step }) => step.run("unstable", () => {
    const n = hit("flaky");
    if (n < 3) throw new Error(`transient failure ${n}`);
    return `ok after ${n}`;
  }),
);

const nonretry = inngest.createFunction(
  {
    id: "nonretry",
    retries: 3,
    triggers: [{ event: "ts/nonretry" }],
    onFailure: async ({ event, error }) => { hit("nonretry.onFailure", { name: event.name, message: error.message }); },
  },
  async ({ step }) => step.run("boom", () => { hit("nonretry"); throw new NonRetriableError("permanent failure"); }),
);

const retryAfter = inngest.createFunction(
  { id: "retry-after", retries: 2, triggers: [{ event: "ts/retry-after" }] },
  async ({ step }) => step.run("call", () => {
    const n = hit("retry-after");
    (seen["retry-after.times"] ||= []).push(Date.now() / 1000);
    if (n === 1) throw new RetryAfterError("rate limited", "2s");
    return "done";
  }),
);

const cancellable = inngest.createFunction(
  { id: "cancellable", triggers: [{ event: "ts/long" }], cancelOn: [{ event: "ts/stop", match: "data.id" }] },
  async ({ step }) => {
    await step.run("start", () => hit("cancellable.start"));
    await step.sleep("long-nap", "30s");
    await step.run("end", () => hit("cancellable.end"));
    return "not cancelled";
  },
);

const throttled = inngest.createFunction(
  { id: "throttled", triggers: [{ event: "ts/throttled" }], throttle: { limit: 1, period: "1s", key: "event.data.user" } },
  async ({ event, step }) => step.run("record", () => { hit("throttled", true); return { user: event.data.user, at: Date.now() / 1000 }; }),
);

const limited = inngest.createFunction(
  { id: "limited", triggers: [{ event: "ts/limited" }], concurrency: [{ limit: 1 }] },
  async ({ step }) => step.run("work", async () => {
    const start = Date.now() / 1000;
    await new Promise((resolve) => setTimeout(resolve, 300));
    return { start, end: Date.now() / 1000 };
  }),
);

const debounced = inngest.createFunction(
  { id: "debounced", triggers: [{ event: "ts/debounced" }], debounce: { period: "1s", key: "event.data.user" } },
  async ({ event }) => { hit("debounced", event.data); return event.data; },
);

const asker = inngest.createFunction(
  { id: "asker", triggers: [{ event: "ts/ask" }] },
  async ({ event, step }) => {
    const model = step.ai.models.openai({ model: "fake-model", baseUrl: event.data.baseUrl, apiKey: "test-key" });
    const reply = await step.ai.infer("ask-model", { model, body: { messages: [{ role: "user", content: event.data.q }] } });
    const page = await step.fetch(event.data.fetchUrl);
    return { answer: reply.choices[0].message.content, fetched: page.status, body: await page.text() };
  },
);

const racer = inngest.createFunction(
  { id: "racer", triggers: [{ event: "ts/race" }] },
  async ({ step }) => {
    const winner = await Promise.race([
      step.run("slow", async () => { await new Promise((r) => setTimeout(r, 1000)); return "slow"; }),
      step.run("fast", () => "fast"),
    ]);
    return step.run("after", () => `winner: ${winner}`);
  },
);

const parallelFail = inngest.createFunction(
  { id: "parallel-fail", retries: 0, triggers: [{ event: "ts/parallel-fail" }] },
  async ({ step }) => {
    try {
      await Promise.all([step.run("ok", () => 1), step.run("bad", () => { throw new Error("bad branch"); })]);
      return "no error";
    } catch (err) {
      return `caught ${err.name}: ${err.message}`;
    }
  },
);

const nightly = inngest.createFunction(
  { id: "nightly", triggers: [{ cron: "TZ=Europe/Paris 0 3 * * *" }] },
  async ({ event, step }) => step.run("report", () => ({ event: event.name, cron: event.data.cron })),
);

const parallelRetry = inngest.createFunction(
  { id: "parallel-retry", retries: 2, triggers: [{ event: "ts/parallel-retry" }] },
  async ({ step }) => {
    const [a, b] = await Promise.all([
      step.run("steady", () => { hit("pr.steady"); return "a"; }),
      step.run("wobbly", () => {
        if (hit("pr.wobbly") === 1) throw new Error("first try fails");
        return "b";
      }),
    ]);
    return step.run("join", () => a + b);
  },
);

const signalWaiter = inngest.createFunction(
  { id: "signal-waiter", triggers: [{ event: "ts/await-signal" }] },
  async ({ event, step }) => step.waitForSignal("approval", { signal: `approve-${event.data.id}`, timeout: "10s" }),
);

const signalSender = inngest.createFunction(
  { id: "signal-sender", triggers: [{ event: "ts/send-signal" }] },
  async ({ event, step }) => step.sendSignal("approve", { signal: `approve-${event.data.id}`, data: { by: event.data.by } }),
);

const pinger = inngest.createFunction(
  { id: "pinger", triggers: [{ event: "ts/start-ping" }] },
  async ({ event, step }) => {
    // Send a request and wait for its reply in one parallel block, as Inngest's docs suggest.
    const [, reply] = await Promise.all([
      step.sendEvent("ping", { name: "ts/ping", data: { id: event.data.id } }),
      step.waitForEvent("pong", { event: "ts/pong", timeout: "20s", match: "data.id" }),
    ]);
    return reply === null ? null : reply.data;
  },
);

const ponger = inngest.createFunction(
  { id: "ponger", triggers: [{ event: "ts/ping" }] },
  async ({ event }) => {
    await inngest.send({ name: "ts/pong", data: { id: event.data.id, pong: true } });
    return "sent";
  },
);

const handler = serve({
  client: inngest,
  functions: [steps, sleeper, waiter, child, parent, sender, onSent, parallel, flaky, nonretry, retryAfter, cancellable, throttled, limited, debounced, asker, racer, parallelFail, nightly, parallelRetry, signalWaiter, signalSender, pinger, ponger],
});

const server = http.createServer((req, res) => {
  if (req.url === "/counts") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ counts, seen }));
    return;
  }
  return handler(req, res);
});
server.listen(Number(process.env.PORT), "127.0.0.1", () => console.log(`listening on ${process.env.PORT}`));
