"""Usage analytics over the metering tables and product events: the call-counts and metrics
catalogue shapes (docs/api-shapes.md).

* :mod:`.buckets` — time buckets, granularity, the 100-bucket fold (pure);
* :mod:`.catalogue` — the metrics catalogue shape's metrics as data; :mod:`.compiler`
  turns any of them into SQL; :mod:`.metrics` runs one and shapes the response;
* :mod:`.call_counts` — historical call counts (the call-counts shape);
* :mod:`.events` — product event types, validation and idempotent ingest;
* :mod:`.call_log` — the raw call log, keyset-paged.
"""
