"""The state file of a bulk scoring run: an append-only journal, one JSON object a line.

::

    {"v": 1, "run": "3f2a…", "created": "2026-03-07T10:00:00Z"}      header
    {"k": "job_1/app_1", "id": "sj_…", "s": "accepted"}               accepted by the API
    {"k": "job_1/app_1", "s": "completed"}                             result handed out
    {"k": "job_1/app_2", "h": "<sha256 of the body>", "s": "rejected"} refused (422)

Each accepted batch is written (and fsynced) before anything else happens, so a run that
stops at any point — crash, Ctrl-C, an error that outlasts the retries — can be started
again with the same file: accepted candidates are not submitted again (their jobs are
polled instead), finished ones are skipped, and a rejected one is retried only when its
body changed. The ``run`` id seeds the batches' ``Idempotency-Key``s, so even a batch
accepted just before a crash, too late to be journaled, is replayed by the server rather
than scored twice when the rerun sends the same batch.

A torn last line (the process died mid-write) is ignored; any other bad line is an error.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from tollhouse.client._errors import ClientError

VERSION = 1
ACCEPTED = "accepted"
REJECTED = "rejected"


class JournalError(ClientError):
    """A state file that cannot be used (wrong format, unreadable)."""


class Journal:
    """What earlier runs with one state file did, and the writer for this run.

    Args:
        path: the state file; created when missing. None keeps the journal in memory
            (no resume, but the same bookkeeping).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        #: key → scoring job id, for candidates accepted but not yet handed out.
        self.pending: dict[str, str] = {}
        #: keys whose result was handed out (completed or failed).
        self.finished: set[str] = set()
        #: key → body hash, for candidates the API refused.
        self.rejected: dict[str, str] = {}
        self.run_id = secrets.token_hex(8)
        self._file: IO[bytes] | None = None
        if self.path is not None:
            self._open(self.path)

    def _open(self, path: Path) -> None:
        try:
            # Opened (and locked) before reading, so a concurrent run cannot write between
            # what we read and what we truncate.
            self._file = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
        except OSError as exc:
            raise JournalError(f"cannot open state file {path}: {exc}") from None
        _lock(self._file, path)
        try:
            data = self._file.read()
        except OSError as exc:
            raise JournalError(f"cannot read state file {path}: {exc}") from None
        keep = len(data)
        if data and not data.endswith(b"\n"):
            # The process died mid-write: keep the tail only if it is a whole record.
            tail = data[data.rfind(b"\n") + 1 :]
            try:
                orjson.loads(tail)
            except orjson.JSONDecodeError:
                keep = len(data) - len(tail)
        try:
            records = _records(path, data[:keep].split(b"\n"))
        except JournalError:
            self.close()
            raise
        if records:
            header = records[0]
            if header.get("v") != VERSION or not isinstance(header.get("run"), str):
                self.close()
                raise JournalError(
                    f"{path} is not a tollhouse bulk-scoring state file (bad first line)"
                )
            self.run_id = header["run"]
            for record in records[1:]:
                self._apply(record)
        else:
            keep = 0  # nothing usable (new, empty, or only a torn header): start afresh
        # Drop a torn tail, and end a whole one, so appends start on their own line.
        self._file.truncate(keep)
        self._file.seek(keep)
        if keep and not data[:keep].endswith(b"\n"):
            self._file.write(b"\n")
        if not records:
            created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            self._write([{"v": VERSION, "run": self.run_id, "created": created}], durable=True)

    def _apply(self, record: dict[str, Any]) -> None:
        key, status = record.get("k"), record.get("s")
        if not isinstance(key, str):
            return
        if status == ACCEPTED and isinstance(record.get("id"), str):
            if key not in self.finished:
                self.pending[key] = record["id"]
        elif status == REJECTED and isinstance(record.get("h"), str):
            self.rejected[key] = record["h"]
        elif isinstance(status, str):
            self.pending.pop(key, None)
            self.finished.add(key)

    def _write(self, records: Iterable[dict[str, Any]], *, durable: bool = False) -> None:
        if self._file is None:
            return
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        self._file.write(data)
        self._file.flush()
        if durable:
            # Accepted jobs must survive a crash: losing one would submit it again. A lost
            # "finished" record only hands a result out twice, so those skip the fsync.
            os.fsync(self._file.fileno())

    def accepted(self, entries: Iterable[tuple[str, str]]) -> None:
        """Record candidates the API accepted: ``(key, scoring job id)`` pairs."""
        records = []
        for key, job_id in entries:
            self.pending[key] = job_id
            self.rejected.pop(key, None)
            records.append({"k": key, "id": job_id, "s": ACCEPTED})
        self._write(records, durable=True)

    def finish(self, key: str, status: str) -> None:
        """Record that a candidate's outcome was handed out (``completed``/``failed``)."""
        self.pending.pop(key, None)
        self.finished.add(key)
        self._write([{"k": key, "s": status}])

    def reject(self, key: str, body_hash: str) -> None:
        """Record that the API refused a candidate's body."""
        self.rejected[key] = body_hash
        self._write([{"k": key, "h": body_hash, "s": REJECTED}])

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _lock(file: IO[bytes], path: Path) -> None:
    """Refuse a state file another run is writing (advisory lock, where the OS has one)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        file.close()
        raise JournalError(f"{path} is in use by another run") from None


def _records(path: Path, lines: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise JournalError(
                f"{path}:{i + 1}: not a JSON line; the state file is damaged"
            ) from None
        if not isinstance(record, dict):
            raise JournalError(f"{path}:{i + 1}: not a JSON object; the state file is damaged")
        out.append(record)
    return out
