"""Usage analytics over the metering tables and product events (seeds 001 and 003).

* :mod:`.buckets` — time buckets, granularity, the 100-bucket fold (pure);
* :mod:`.catalogue` — seed 003's metrics as data; :mod:`.compiler` turns any of them
  into SQL; :mod:`.metrics` runs one and shapes the response;
* :mod:`.call_counts` — seed 001's historical call counts;
* :mod:`.events` — product event types, validation and idempotent ingest;
* :mod:`.call_log` — the raw call log, keyset-paged.
"""
