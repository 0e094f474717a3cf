"""An app for the budget crash test: one ai.infer step, under a budget, against the fake
provider at ``BUDGET_FAKE_URL`` (priced like OpenAI from the bundled table)."""

from __future__ import annotations

import functools
import os

import stepline
from stepline.llm import LLM, Provider

app = stepline.App("budget-crash")
BUDGET = "ask:1d:user_id"


@functools.cache
def llm() -> LLM:
    provider = Provider(name="fake", base_url=os.environ["BUDGET_FAKE_URL"], api_key="fake-key", pricing_id="openai")
    return LLM([provider], default="fake", prices={})


@app.function(id="ask", trigger=stepline.TriggerEvent("budget/ask"), retries=2,
              budgets=[stepline.Budget(limit_usd=1.0, period="1d", key="event.data.user_id")])
async def ask(ctx: stepline.Context) -> str:
    reply = await ctx.step.ai.infer("answer", model="gpt-4o-mini", messages="How many legs does a spider have?",
                                    llm=llm(), max_tokens=100)
    return str(reply["text"])
