"""The example upstream's state, in the database: criteria per job and scoring results.

Everything is keyed by :class:`Owner` (org and environment) first, so one org can never
reach another's jobs or results, and one org's sandbox data stays apart from its
production data: a lookup with the wrong owner finds nothing. The tables
(:mod:`tollhouse.example.schema`) live in tollhouse's database, so every process opened on
it — ``tollhouse serve`` with the example mounted, ``tollhouse worker``, any number of
``tollhouse example serve`` — sees the same state.

Each owner keeps about ``max_jobs_per_org`` jobs and ``max_results_per_org`` results; past
that the oldest go first (jobs by last change, results by creation). Pruning is a
statement of its own, so it does not run on every write: a write prunes its owner with a
chance of one in ``bound ÷ 100`` (every write for bounds up to 100), which keeps an owner
within about 1 % of its bound per process writing to it at a cost of about one pruning
statement per 100 writes.

Statements per request are few on purpose: the example is the upstream of capacity
benchmarks that run hundreds of requests at once. ``POST /v1/score`` is one read and one
insert, and concurrent requests share them: the reads of the jobs' criteria waiting at a
moment go to the database as one ``SELECT``, and the results waiting to be stored as one
insert (:class:`_Coalesced`). Each shared statement starts after all its callers asked,
so a read sees every change that finished before its caller asked, and a result is
committed before its caller answers. On PostgreSQL lone statements run in autocommit (no
``BEGIN`` / ``COMMIT`` round trips); changes that read first run in one transaction with
the row locked (``FOR UPDATE``; ``BEGIN IMMEDIATE`` on SQLite).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson
from sqlalchemy import bindparam, delete, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.errors import StorageError
from tollhouse.example.schema import example_jobs, example_results
from tollhouse.example.scoring import CriterionScore
from tollhouse.schema import create_schema
from tollhouse.storage import dialect
from tollhouse.storage.transactions import read_connection, write_transaction

#: Default bounds per owner (jobs with criteria; scoring results).
MAX_JOBS_PER_ORG = 10_000
MAX_RESULTS_PER_ORG = 10_000
#: Pruning runs on about one write in ``bound ÷ PRUNE_DIVISOR``: an owner may overshoot its
#: bound by about 1 % per writing process between two prunes.
PRUNE_DIVISOR = 100
#: How often a change to a new job is retried when another process created the job at
#: the same moment (the retry then finds the row and locks it).
_CHANGE_ATTEMPTS = 5
#: A job's criteria once all were deleted one by one: the job stays (archived or not) but
#: counts as having none.
_NO_CRITERIA = "[]"
#: Most jobs read, or results inserted, by one shared statement: far below either
#: engine's limit on bound parameters (32,766).
_MAX_SHARED = 500

K = TypeVar("K")
V = TypeVar("V")

_J = example_jobs.c
_R = example_results.c


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose data a request reaches: an org, in one environment."""

    org: str
    environment: str = ""
    """``SANDBOX``, ``PRODUCTION``, or empty when the caller named none."""


@dataclass(frozen=True, slots=True)
class Criterion:
    """One stored criterion of a job."""

    id: str
    """``crit_`` + 12 hex characters."""
    name: str
    description: str
    weight: float
    """Share of the score; hand edits may leave a job's weights not summing to 1."""


@dataclass(frozen=True, slots=True)
class JobCriteria:
    """A job's criteria and whether they are archived."""

    job_id: str
    criteria: tuple[Criterion, ...]
    archived_at: datetime | None = None
    """When the criteria were archived, or None while active."""


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """One completed scoring of an application."""

    scoring_job_id: str
    """``sj_`` + 16 random hex characters."""
    application_id: str
    job_id: str
    score: float
    breakdown: tuple[CriterionScore, ...]
    completed_at: datetime


JobChange = Callable[[JobCriteria | None], JobCriteria]
"""Given a job as stored (None when absent), the job to store; the same object to leave
it unchanged. May raise (an API error) to change nothing."""


class _Raced(Exception):
    """Another process created the job between our read and our insert."""


def _utc(moment: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite hands times back without a zone)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _wall_clock() -> datetime:
    return datetime.now(UTC)


def _prune_every(bound: int) -> int:
    return max(1, bound // PRUNE_DIVISOR)


def criteria_text(criteria: Iterable[Criterion]) -> str:
    """A job's criteria as stored: a JSON array of ``{id, name, description, weight}``."""
    return orjson.dumps(
        [
            {"id": c.id, "name": c.name, "description": c.description, "weight": c.weight}
            for c in criteria
        ]
    ).decode()


def _criteria_from(text: str) -> tuple[Criterion, ...]:
    return tuple(
        Criterion(str(c["id"]), str(c["name"]), str(c["description"]), float(c["weight"]))
        for c in orjson.loads(text)
    )


def _breakdown_text(breakdown: Iterable[CriterionScore]) -> str:
    return orjson.dumps(
        [[b.criterion_id, b.name, b.weight, b.score, list(b.evidence)] for b in breakdown]
    ).decode()


def _breakdown_from(text: str) -> tuple[CriterionScore, ...]:
    return tuple(
        CriterionScore(str(i), str(name), float(weight), float(score), tuple(evidence))
        for i, name, weight, score, evidence in orjson.loads(text)
    )


def _result_from(row: Any) -> ScoreResult:
    return ScoreResult(
        scoring_job_id=row.scoring_job_id,
        application_id=row.application_id,
        job_id=row.job_id,
        score=float(row.score),
        breakdown=_breakdown_from(row.breakdown),
        completed_at=_utc(row.completed_at),
    )


class _Coalesced(Generic[K, V]):
    """Items submitted by concurrent callers, handled by one call of ``run`` per batch.

    While a batch runs, new items wait for the next one, which starts once it is done:
    every call starts after each of its items was submitted (a read sees all writes that
    finished before its caller asked; a write is done when its caller resumes). A lone
    caller waits for nothing but its own statement.

    Args:
        run: handles a batch; returns one value per item, in order.
        limit: most items in one batch.
    """

    def __init__(self, run: Callable[[list[K]], Awaitable[list[V]]], limit: int) -> None:
        self._run = run
        self._limit = limit
        self._pending: list[tuple[K, asyncio.Future[V]]] = []
        self._draining = False
        self._task: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[K]) -> list[V]:
        """Handle ``items`` in the next batch (together, in order); their values.

        Raises:
            Exception: whatever ``run`` raised for the batch.
        """
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures, strict=True))
        if not self._draining:
            self._draining = True
            # Kept referenced: the loop holds tasks weakly.
            self._task = loop.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._limit]
                del self._pending[: self._limit]
                try:
                    values = await self._run([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():  # a caller that gave up is skipped
                            future.set_exception(exc)
                    continue
                except BaseException:
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), value in zip(batch, values, strict=True):
                    if not future.done():
                        future.set_result(value)
        except BaseException:
            # Cancelled (the loop is closing): nothing will run what is left.
            for _, future in self._pending:
                future.cancel()
            self._pending.clear()
            raise
        finally:
            # No await between the last check of _pending and here: a caller arriving
            # after it starts the next drain itself.
            self._draining = False


class ExampleStore:
    """Jobs' criteria and scoring results, per owner, bounded, in the database.

    Args:
        engine: tollhouse's database (SQLite or PostgreSQL); the store never disposes it.
        max_jobs_per_org: jobs an owner keeps, about (see the module's notes on pruning);
            the least recently changed go first.
        max_results_per_org: results an owner keeps, about; the oldest go first.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_jobs_per_org: int = MAX_JOBS_PER_ORG,
        max_results_per_org: int = MAX_RESULTS_PER_ORG,
    ) -> None:
        if max_jobs_per_org < 1 or max_results_per_org < 1:
            raise ValueError("store bounds must be at least 1")
        self.engine = engine
        self.max_jobs_per_org = max_jobs_per_org
        self.max_results_per_org = max_results_per_org
        self._sqlite = engine.dialect.name == "sqlite"
        # On PostgreSQL a lone statement needs no transaction: autocommit saves the BEGIN
        # and COMMIT round trips. SQLite writes go through write_transaction instead, whose
        # per-process queue keeps hundreds of writers fair.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._prepared = False
        self._prepare_lock: asyncio.Lock | None = None
        self._jobs_every = _prune_every(max_jobs_per_org)
        self._results_every = _prune_every(max_results_per_org)
        # Not a secret: only spreads pruning over writes.
        self._random = random.Random()
        self._build_statements(engine.dialect.name)
        self._job_reads: _Coalesced[tuple[Owner, str], JobCriteria | None] = _Coalesced(
            self._read_jobs, _MAX_SHARED
        )
        self._result_writes: _Coalesced[tuple[Owner, ScoreResult], None] = _Coalesced(
            self._insert_results_now, _MAX_SHARED
        )

    def _build_statements(self, name: str) -> None:
        """Every statement once: the hot paths only bind values."""
        job_key = (
            _J.org == bindparam("o"),
            _J.environment == bindparam("e"),
            _J.job_id == bindparam("j"),
        )
        # Lone reads of a job go through _select_keyed_jobs, shared; this one locks the row
        # for a change.
        self._lock_job = select(_J.criteria, _J.archived_at).where(*job_key).with_for_update()
        self._select_keyed_jobs = select(
            _J.org, _J.environment, _J.job_id, _J.criteria, _J.archived_at
        ).where(tuple_(_J.org, _J.environment, _J.job_id).in_(bindparam("keys", expanding=True)))
        self._select_jobs = select(_J.job_id, _J.criteria, _J.archived_at).where(
            _J.org == bindparam("o"),
            _J.environment == bindparam("e"),
            _J.job_id.in_(bindparam("js", expanding=True)),
        )
        upsert = dialect.insert(name, example_jobs)
        self._upsert_job = upsert.on_conflict_do_update(
            index_elements=[_J.org, _J.environment, _J.job_id],
            set_={
                "criteria": upsert.excluded.criteria,
                "archived_at": upsert.excluded.archived_at,
                "changed_at": upsert.excluded.changed_at,
            },
        )
        self._insert_new_job = dialect.insert(name, example_jobs).on_conflict_do_nothing(
            index_elements=[_J.org, _J.environment, _J.job_id]
        )
        self._update_job = (
            update(example_jobs)
            .where(*job_key)
            .values(criteria=bindparam("c"), archived_at=bindparam("a"), changed_at=bindparam("t"))
        )
        self._delete_job = delete(example_jobs).where(*job_key, _J.criteria != _NO_CRITERIA)
        kept_jobs = (
            select(_J.job_id)
            .where(_J.org == bindparam("o"), _J.environment == bindparam("e"))
            .order_by(_J.changed_at.desc(), _J.job_id.desc())
            .limit(self.max_jobs_per_org)
        )
        self._prune_jobs = delete(example_jobs).where(
            _J.org == bindparam("o"),
            _J.environment == bindparam("e"),
            _J.job_id.not_in(kept_jobs),
        )

        self._insert_results = example_results.insert()
        result_columns = (
            _R.scoring_job_id,
            _R.application_id,
            _R.job_id,
            _R.score,
            _R.breakdown,
            _R.completed_at,
        )
        owned = (_R.org == bindparam("o"), _R.environment == bindparam("e"))
        self._select_result = select(*result_columns).where(
            *owned, _R.scoring_job_id == bindparam("s")
        )
        self._select_latest = (
            select(*result_columns)
            .where(*owned, _R.application_id == bindparam("a"))
            .order_by(_R.seq.desc())
            .limit(1)
        )
        # The seq of the newest result past the bound; it and everything older go.
        cutoff = (
            select(_R.seq)
            .where(*owned)
            .order_by(_R.seq.desc())
            .offset(self.max_results_per_org)
            .limit(1)
            .scalar_subquery()
        )
        self._prune_results = delete(example_results).where(*owned, _R.seq <= cutoff)

    # --- plumbing ----------------------------------------------------------------------

    async def prepare(self) -> None:
        """Bring the database's schema up to date (tollhouse's migration runner), once.

        Called by every other method, so a store works without it; the app calls it at
        startup so that a database it cannot reach stops it there.

        Raises:
            StorageError: the database could not be reached or migrated.
        """
        if self._prepared:
            return
        if self._prepare_lock is None:
            self._prepare_lock = asyncio.Lock()
        async with self._prepare_lock:
            if not self._prepared:
                await create_schema(self.engine)
                self._prepared = True

    def _reading(self, what: str) -> AbstractAsyncContextManager[AsyncConnection]:
        return read_connection(self.engine if self._sqlite else self._autocommit, what)

    @asynccontextmanager
    async def _writing(self, what: str) -> AsyncIterator[AsyncConnection]:
        """A connection for writes that need no read first (each statement atomic)."""
        if self._sqlite:
            async with write_transaction(self.engine, what) as conn:
                yield conn
        else:
            async with read_connection(self._autocommit, what) as conn:
                yield conn

    def _due(self, every: int) -> bool:
        return every == 1 or self._random.randrange(every) == 0

    @staticmethod
    def _key(owner: Owner, job_id: str) -> dict[str, str]:
        return {"o": owner.org, "e": owner.environment, "j": job_id}

    @staticmethod
    def _job(job_id: str, criteria: str, archived_at: datetime | None) -> JobCriteria:
        return JobCriteria(
            job_id, _criteria_from(criteria), None if archived_at is None else _utc(archived_at)
        )

    # --- jobs --------------------------------------------------------------------------

    async def get_job(self, owner: Owner, job_id: str) -> JobCriteria | None:
        """The job's criteria for this owner, or None (read together with the other
        requests' reads waiting at the moment)."""
        await self.prepare()
        [job] = await self._job_reads.submit([(owner, job_id)])
        return job

    async def _read_jobs(self, keys: list[tuple[Owner, str]]) -> list[JobCriteria | None]:
        """One ``SELECT`` for a batch of job reads."""
        wanted = sorted({(o.org, o.environment, job_id) for o, job_id in keys})
        async with self._reading("could not read the example's criteria") as conn:
            rows = (await conn.execute(self._select_keyed_jobs, {"keys": wanted})).all()
        found = {
            (r.org, r.environment, r.job_id): self._job(r.job_id, r.criteria, r.archived_at)
            for r in rows
        }
        return [found.get((o.org, o.environment, job_id)) for o, job_id in keys]

    async def get_jobs(self, owner: Owner, job_ids: Iterable[str]) -> dict[str, JobCriteria]:
        """The jobs of ``job_ids`` this owner has, by id (one statement)."""
        wanted = sorted(set(job_ids))
        if not wanted:
            return {}
        await self.prepare()
        params = {"o": owner.org, "e": owner.environment, "js": wanted}
        async with self._reading("could not read the example's criteria") as conn:
            rows = (await conn.execute(self._select_jobs, params)).all()
        return {r.job_id: self._job(r.job_id, r.criteria, r.archived_at) for r in rows}

    async def replace_job(self, owner: Owner, job: JobCriteria) -> None:
        """Insert or replace a job (criteria and archive state); it becomes the most
        recently changed."""
        await self.prepare()
        values = self._row(owner, job)
        async with self._writing("could not store the example's criteria") as conn:
            await conn.execute(self._upsert_job, values)
            if self._due(self._jobs_every):
                await conn.execute(self._prune_jobs, {"o": owner.org, "e": owner.environment})

    async def change_job(self, owner: Owner, job_id: str, change: JobChange) -> JobCriteria:
        """Read a job, let ``change`` decide what it becomes, and store that, atomically:
        concurrent changes to one job, from any process, apply one after the other.

        Args:
            owner: whose job.
            job_id: the job.
            change: see :data:`JobChange`; it may run more than once (a concurrent
                creation of the same job makes the store read again).

        Returns:
            The job as stored afterwards.

        Raises:
            StorageError: the database failed.
        """
        await self.prepare()
        key = self._key(owner, job_id)
        for _ in range(_CHANGE_ATTEMPTS):
            try:
                async with write_transaction(
                    self.engine, "could not change the example's criteria"
                ) as conn:
                    row = (await conn.execute(self._lock_job, key)).first()
                    current = None if row is None else self._job(job_id, *row)
                    new = change(current)
                    if new is current:
                        return new
                    values = self._row(owner, new)
                    if row is not None:
                        await conn.execute(
                            self._update_job,
                            {
                                **key,
                                "c": values["criteria"],
                                "a": values["archived_at"],
                                "t": values["changed_at"],
                            },
                        )
                        return new
                    inserted = await conn.execute(self._insert_new_job, values)
                    if inserted.rowcount == 0:
                        raise _Raced
                    if self._due(self._jobs_every):
                        params = {"o": owner.org, "e": owner.environment}
                        await conn.execute(self._prune_jobs, params)
                    return new
            except _Raced:
                continue
        raise StorageError(f'job "{job_id}" kept being created concurrently; try again')

    async def delete_job(self, owner: Owner, job_id: str) -> bool:
        """Remove a job that has criteria; whether there was one. Its results stay
        readable."""
        await self.prepare()
        async with self._writing("could not delete the example's criteria") as conn:
            deleted = await conn.execute(self._delete_job, self._key(owner, job_id))
        return bool(deleted.rowcount)

    @staticmethod
    def _row(owner: Owner, job: JobCriteria) -> dict[str, Any]:
        return {
            "org": owner.org,
            "environment": owner.environment,
            "job_id": job.job_id,
            "criteria": criteria_text(job.criteria),
            "archived_at": None if job.archived_at is None else _utc(job.archived_at),
            "changed_at": _wall_clock(),
        }

    # --- results -----------------------------------------------------------------------

    async def save_results(self, owner: Owner, results: Sequence[ScoreResult]) -> None:
        """Keep results, in order; the last of an application becomes its latest. They
        are inserted together with the other requests' results waiting at the moment,
        and committed when this returns."""
        if not results:
            return
        await self.prepare()
        await self._result_writes.submit([(owner, r) for r in results])

    async def _insert_results_now(self, batch: list[tuple[Owner, ScoreResult]]) -> list[None]:
        """One insert for a batch of results, then the pruning that fell due."""
        rows = [
            {
                "org": owner.org,
                "environment": owner.environment,
                "scoring_job_id": r.scoring_job_id,
                "application_id": r.application_id,
                "job_id": r.job_id,
                "score": r.score,
                "breakdown": _breakdown_text(r.breakdown),
                "completed_at": _utc(r.completed_at),
            }
            for owner, r in batch
        ]
        due = {owner for owner, _ in batch if self._due(self._results_every)}
        async with self._writing("could not store the example's scoring results") as conn:
            await conn.execute(self._insert_results, rows)
            for owner in sorted(due, key=lambda o: (o.org, o.environment)):
                await conn.execute(self._prune_results, {"o": owner.org, "e": owner.environment})
        return [None] * len(batch)

    async def get_result(self, owner: Owner, scoring_job_id: str) -> ScoreResult | None:
        """A result by its scoring job id for this owner, or None."""
        await self.prepare()
        params = {"o": owner.org, "e": owner.environment, "s": scoring_job_id}
        async with self._reading("could not read the example's scoring results") as conn:
            row = (await conn.execute(self._select_result, params)).first()
        return None if row is None else _result_from(row)

    async def latest_result(self, owner: Owner, application_id: str) -> ScoreResult | None:
        """The latest result stored for an application for this owner, or None."""
        await self.prepare()
        params = {"o": owner.org, "e": owner.environment, "a": application_id}
        async with self._reading("could not read the example's scoring results") as conn:
            row = (await conn.execute(self._select_latest, params)).first()
        return None if row is None else _result_from(row)


def criterion_id(org: str, job_id: str, name: str) -> str:
    """A criterion's id: ``crit_`` + the first 12 hex characters of sha1(org + jobId + name).

    Deterministic, so generating criteria twice for a job gives the same ids.
    """
    return "crit_" + _digest(org, job_id, name)


def question_id(org: str, job_id: str, name: str) -> str:
    """An interview question's id: ``q_`` + the same digest as its criterion's id."""
    return "q_" + _digest(org, job_id, name)


def _digest(org: str, job_id: str, name: str) -> str:
    # Not a security boundary: sha1 only spreads ids; lookups are scoped by org and job anyway.
    return hashlib.sha1((org + job_id + name).encode(), usedforsecurity=False).hexdigest()[:12]
