"""Fakes that speak real protocols on loopback: for tests, the examples and ``stepline dev``.

- ``loopback``: ``LoopbackServer``, a bounded HTTP/1.1 server on 127.0.0.1 in its own
  thread, the base of every fake here and of the examples' SIMULATED APIs.
- ``provider``: ``FakeProvider``, an OpenAI-compatible and Anthropic endpoint that
  answers, streams and fails on demand.
- ``behaviours``: what the fake provider does with a request (``Reply``, ``Fail``,
  ``Truncate``, ``Reset``, ``StreamError``, and shorthands like ``rate_limited``).
- ``wire``: its answers in both wire formats.

Tests import them from ``stepline.testing``.
"""
