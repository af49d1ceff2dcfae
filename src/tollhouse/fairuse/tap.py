"""The fair-use tap: what the meter does not record, counted in memory and flushed with it.

Two facts the fair-use signals need are not in a :class:`~tollhouse.metering.record.CallRecord`:

* **which ``jobId`` a generation was for** — it is in the request body, which the gateway
  streams without reading. :class:`GenerationCapture` wraps the inner app and, only for
  the generation routes of the policy (literal paths, one set lookup per request),
  keeps the first :data:`MAX_BODY` bytes of the body and reads ``jobId`` once the
  answer was a 2xx;
* **a 429's ``Retry-After`` and the caller's next arrival** — the gateway hands each 429
  it sends to :meth:`FairUseTap.refused` (its error path only), and the tap watches the
  meter's aggregation passes (:meth:`FairUseTap.observe`, once per pass of up to 1,024
  calls, not per call): the next call of the same key, method and route after a 429
  either came before its ``Retry-After`` elapsed (a *hit*) or not.

Both end up as per-minute counters (:data:`~tollhouse.fairuse.schema.fair_use_tallies`)
written by :meth:`FairUseTap.flush` each time the meter flushes (additive upserts, so
several processes share the table). Nothing here does I/O on the request path or
raises into it. With several server processes a retry that lands on another process
than its 429 is not seen (a tight retry loop on one connection stays on one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.errors import StorageError
from tollhouse.fairuse.schema import MAX_SUBJECT, RATE_LIMITED, fair_use_tallies
from tollhouse.keys.model import Identity
from tollhouse.metering.record import CallRecord
from tollhouse.storage import dialect
from tollhouse.storage.transactions import write_transaction

logger = logging.getLogger(__name__)

#: Bytes of a generation request's body kept to read its ``jobId``.
MAX_BODY = 65_536
#: Bounds on what the tap holds while nothing flushes it (notes and pending 429s are
#: dropped past these; tallies are cleared when the database refuses them for long).
MAX_NOTES = 10_000
MAX_PENDING = 10_000
MAX_TALLIES = 100_000

#: ``(org, environment, kind, subject, minute)``.
TallyKey = tuple[str, str, str, str, int]


class Tally:
    """Counts of one tally key: calls, hits, first and last µs."""

    __slots__ = ("count", "first_us", "hits", "last_us")

    def __init__(self, t_us: int) -> None:
        self.count = 0
        self.hits = 0
        self.first_us = t_us
        self.last_us = t_us

    def add(self, t_us: int, count: int = 1, hits: int = 0) -> None:
        self.count += count
        self.hits += hits
        if t_us < self.first_us:
            self.first_us = t_us
        if t_us > self.last_us:
            self.last_us = t_us


class FairUseTap:
    """In-memory fair-use counters: generations per job, 429s and early retries per key."""

    def __init__(self) -> None:
        self._tallies: dict[TallyKey, Tally] = {}
        #: (key id, arrival) → Retry-After seconds of a 429 not yet seen by the meter.
        self._notes: dict[tuple[str, float], float] = {}
        #: (org, env, key, method, route) → (arrival, retry-at, tally key) of the last 429.
        self._pending: dict[tuple[str, str, str, str, str | None], tuple[float, float, TallyKey]]
        self._pending = {}

    def _tally(self, key: TallyKey, t_us: int) -> Tally:
        found = self._tallies.get(key)
        if found is None:
            if len(self._tallies) >= MAX_TALLIES:
                logger.warning("fair-use tallies dropped", extra={"tallies": len(self._tallies)})
                self._tallies.clear()
            found = self._tallies[key] = Tally(t_us)
        return found

    def generation(self, org: str, environment: str, kind: str, job_id: str, t: float) -> None:
        """Count one successful generation of ``kind`` (the route's path) for ``job_id``."""
        if not job_id or len(job_id) > MAX_SUBJECT:
            return
        t_us = round(t * 1_000_000)
        key = (org, environment, kind, job_id, t_us // 60_000_000 * 60)
        self._tally(key, t_us).add(t_us)

    def refused(self, identity: object, arrived: float, headers: Mapping[str, str]) -> None:
        """Note a 429 the gateway sent (its error path): its ``Retry-After``."""
        if not isinstance(identity, Identity):
            return
        try:
            wait = float(headers.get("retry-after", headers.get("Retry-After", "0")))
        except ValueError:
            return
        if len(self._notes) >= MAX_NOTES:
            self._notes.clear()
        self._notes[(identity.key_id, arrived)] = wait

    def observe(self, calls: list[CallRecord]) -> None:
        """Watch one aggregation pass of the meter (never raises)."""
        if not self._notes and not self._pending:
            return
        try:
            self._observe(calls)
        except Exception:
            logger.exception("fair-use tap could not observe calls")

    def _observe(self, calls: list[CallRecord]) -> None:
        notes, pending = self._notes, self._pending
        for call in calls:
            if not pending and not notes:
                return
            who = (call.org, call.environment, call.key_id, call.method, call.route)
            if pending:
                last = pending.get(who)
                if last is not None and call.time > last[0]:
                    del pending[who]
                    if call.time < last[1]:
                        self._tally(last[2], round(last[0] * 1_000_000)).hits += 1
            if call.status == 429:
                wait = notes.pop((call.key_id, call.time), None)
                if wait is None:
                    continue
                t_us = round(call.time * 1_000_000)
                key = (
                    call.org,
                    call.environment,
                    RATE_LIMITED,
                    call.key_id,
                    t_us // 60_000_000 * 60,
                )
                self._tally(key, t_us).add(t_us)
                if len(pending) >= MAX_PENDING:
                    pending.clear()
                pending[who] = (call.time, call.time + wait, key)

    def drain(self) -> dict[TallyKey, Tally]:
        """Take the tallies counted so far."""
        out, self._tallies = self._tallies, {}
        return out

    def restore(self, tallies: dict[TallyKey, Tally]) -> None:
        """Put back tallies whose write failed."""
        for key, t in tallies.items():
            self._tally(key, t.first_us).add(t.first_us, t.count, t.hits)
            self._tallies[key].add(t.last_us, 0)

    async def flush(self, engine: AsyncEngine) -> int:
        """Add the tallies to ``fair_use_tallies`` (one transaction); returns rows written.

        Raises:
            StorageError: the write failed; the tallies are back in memory.
        """
        tallies = self.drain()
        if not tallies:
            return 0
        rows = [
            {
                "org": k[0],
                "environment": k[1],
                "kind": k[2],
                "subject": k[3],
                "minute": k[4],
                "count": t.count,
                "hits": t.hits,
                "first_us": t.first_us,
                "last_us": t.last_us,
            }
            for k, t in tallies.items()
        ]
        try:
            async with write_transaction(engine, "could not write fair-use tallies") as conn:
                name = conn.dialect.name
                table = fair_use_tallies
                ins = dialect.insert(name, table)
                ex = ins.excluded
                stmt = ins.on_conflict_do_update(
                    index_elements=[
                        table.c.org,
                        table.c.environment,
                        table.c.kind,
                        table.c.subject,
                        table.c.minute,
                    ],
                    set_={
                        "count": table.c.count + ex.count,
                        "hits": table.c.hits + ex.hits,
                        "first_us": dialect.least(name, table.c.first_us, ex.first_us),
                        "last_us": dialect.greatest(name, table.c.last_us, ex.last_us),
                    },
                )
                await conn.execute(stmt, rows)
        except StorageError:
            self.restore(tallies)
            raise
        return len(rows)


def _job_id(body: bytes) -> str | None:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    found = data.get("jobId") if isinstance(data, dict) else None
    return found if isinstance(found, str) else None


class GenerationCapture:
    """An ASGI wrapper of the inner app counting generations per ``jobId``.

    Args:
        app: the inner app (after the gateway: the identity is in ``scope["state"]``).
        tap: where generations are counted.
        routes: ``(method, path)`` pairs of the generation routes.
        clock: wall clock, epoch seconds.
    """

    def __init__(
        self,
        app: Any,
        tap: FairUseTap,
        routes: Collection[tuple[str, str]],
        clock: Callable[[], float],
    ) -> None:
        self.app = app
        self.tap = tap
        self.routes = frozenset(routes)
        self.clock = clock

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) not in self.routes:
            await self.app(scope, receive, send)
            return
        arrived = self.clock()
        body = bytearray()
        status = 0

        async def keep_body() -> Any:
            message = await receive()
            if message["type"] == "http.request" and len(body) < MAX_BODY:
                body.extend(message.get("body", b"")[: MAX_BODY - len(body)])
            return message

        async def keep_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, keep_body, keep_status)
        if not 200 <= status < 300:
            return
        identity = scope.get("state", {}).get("identity")
        job_id = _job_id(bytes(body))
        if isinstance(identity, Identity) and job_id is not None:
            self.tap.generation(identity.org, identity.environment, scope["path"], job_id, arrived)


def generation_routes(routes: Collection[str]) -> list[tuple[str, str]]:
    """``"POST /v1/criteria/generate"`` patterns → ``(method, path)`` pairs."""
    out: list[tuple[str, str]] = []
    for r in routes:
        methods, path = r.split()
        out.extend((m, path) for m in methods.split("/") if m)
    return out
