"""What Stepline tells operators while it runs, beyond ``/metrics``' database figures.

- ``carrier``: the W3C trace context an event carries from its sender (``event.trace``),
  checked where it enters; needs nothing installed.
- ``tracing``: OpenTelemetry spans for run segments and step attempts, and the sender's
  side of the carrier; a no-op unless the ``otel`` extra is installed and the process has a
  tracer provider.
- ``logs``: the run, function, step and attempt on every log line emitted inside a run
  (context variables), and the JSON format (``STEPLINE_LOG_FORMAT=json``).
- ``counters``: what a worker counts in memory (lease losses, retries) until it adds them
  to the totals in the database that ``/metrics`` reports.

This package imports no other layer of Stepline but ``errors``, so the SDK may use it.
"""
