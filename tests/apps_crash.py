"""An app for crash tests: each step appends its name to a log file named by the event."""

from __future__ import annotations

import os
import time

import stepline

app = stepline.App("crash")


def record(log: str, name: str) -> str:
    with open(log, "a") as fh:
        fh.write(f"{name} {os.getpid()}\n")
        fh.flush()
        os.fsync(fh.fileno())
    return name


def slow_step(log: str, marker: str) -> str:
    # The marker is made before "s3" reaches the log: the test kills the worker as soon as
    # it reads "s3" there, and a marker not yet made would send the next attempt to sleep.
    first = not os.path.exists(marker)
    if first:
        open(marker, "w").close()
    record(log, "s3")
    if first:
        time.sleep(120)  # the test kills the worker here
    return "s3"


@app.function(id="multi", trigger=stepline.TriggerEvent("crash/go"), retries=2)
def multi(ctx: stepline.SyncContext) -> list:
    log, marker = ctx.event.data["log"], ctx.event.data["marker"]
    done = [ctx.step.run("s1", record, log, "s1"), ctx.step.run("s2", record, log, "s2")]
    done.append(ctx.step.run("s3", slow_step, log, marker))
    done.append(ctx.step.run("s4", record, log, "s4"))
    done.append(ctx.step.run("s5", record, log, "s5"))
    return done
