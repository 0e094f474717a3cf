"""The apps ``stepline dev`` serves when given none: the four seed apps, runnable offline.

With no provider key set, ``stepline dev`` starts the fake provider from
``stepline.fakes`` (SIMULATED models ``fake-quick`` and ``fake-slow``) and says
so; the repository and query examples call a SIMULATED API on loopback.

- ``llm/generate.requested``  chat: validate → call-model (streamed) → store → notify;
  throttled per user, cancellable with ``llm/generate.cancel`` (``chat.py``, web side ``chat_api.py``)
- ``studio/generate.screens``  one model step per screen, progress, cost per job (``screens.py``)
- ``repo/analyze.requested``  five durable steps, rate-limit aware (``repo_analysis.py``)
- ``query/execute.requested`` (or ``crawl/requested``)  a page per step, 1 s apart,
  pausable and resumable (``paginated_query.py``)

Try: ``stepline send llm/generate.requested --data '{"user_id":"u1","prompt":"hi"}'``
"""

from __future__ import annotations

from stepline.examples import chat, paginated_query, repo_analysis, screens

app = [chat.app, screens.app, repo_analysis.app, paginated_query.app]
