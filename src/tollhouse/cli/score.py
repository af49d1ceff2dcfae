"""``tollhouse score --file candidates.jsonl`` — bulk scoring through the SDK.

Each line of the file is one ``POST /v1/score`` body (``{"applicationId", "jobId",
"candidate": {"name", "resume", …}}``). The run stays within the key's limits on its
own, shows a progress bar, and with ``--resume STATE`` can be interrupted and started
again without submitting anything twice (:meth:`tollhouse.client.Client.score_many`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tollhouse.cli.common import err_console, fail
from tollhouse.cli.status import ApiKeyOpt, UrlOpt, resolve_api_key
from tollhouse.client import (
    DEFAULT_BASE_URL,
    BulkProgress,
    Client,
    ClientError,
    ScoreOutcome,
)
from tollhouse.settings import TENANT_ID


def read_candidates(path: Path) -> int:
    """Check that every non-blank line of ``path`` is a JSON object; return how many.

    Exits with the first bad line's number, before anything is sent.
    """
    count = 0
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    fail(f"{path}:{number}: not JSON ({exc})", 2)
                if not isinstance(value, dict):
                    fail(f"{path}:{number}: each line must be a JSON object (a score body)", 2)
                count += 1
    except OSError as exc:
        fail(f"cannot read {path}: {exc}", 2)
    return count


def iter_candidates(path: Path) -> Iterator[dict[str, Any]]:
    """The file's score bodies, one line at a time (the file may be large)."""
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                value = orjson.loads(line)
                assert isinstance(value, dict)
                yield value


def outcome_json(outcome: ScoreOutcome) -> dict[str, Any]:
    """One line of ``--output``."""
    error = outcome.error
    return {
        "key": outcome.key,
        "status": outcome.status,
        "applicationId": outcome.application_id,
        "jobId": outcome.job_id,
        "scoringJobId": outcome.scoring_job_id,
        "score": outcome.score,
        "error": (
            {"code": error.code, "message": error.message, "status": error.status}
            if error is not None
            else None
        ),
        "result": dict(outcome.job.result) if outcome.job and outcome.job.result else None,
    }


def score(
    file: Annotated[
        Path,
        typer.Option(
            "--file", "-f", help="JSON lines: one score body per line.", show_default=False
        ),
    ],
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="State file: created when missing; run again with it to continue where a "
            "run stopped, without submitting anything twice.",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Write each outcome as a JSON line here ('-': stdout)."
        ),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", envvar=TENANT_ID.env, help="X-Tenant-Id to send."),
    ] = None,
    job_id: Annotated[
        str | None, typer.Option("--job-id", help="jobId for lines that have none.")
    ] = None,
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", min=1, max=100, help="Candidates per batch request.")
    ] = 100,
    max_pending: Annotated[
        int, typer.Option("--max-pending", min=1, help="Unfinished jobs allowed at once.")
    ] = 1000,
    no_wait: Annotated[
        bool,
        typer.Option("--no-wait", help="Only submit; results arrive by webhook (or poll later)."),
    ] = False,
    api_key: ApiKeyOpt = None,
    url: UrlOpt = DEFAULT_BASE_URL,
) -> None:
    """Score every candidate of a JSON-lines file, within the key's rate limits."""
    key = resolve_api_key(api_key, url)
    total = read_candidates(file)
    if total == 0:
        fail(f"{file} holds no candidates", 2)
    counts = BulkProgress()

    def seen(progress: BulkProgress) -> None:
        nonlocal counts
        counts = progress

    outcomes = 0
    failures = 0
    bar = Progress(
        TextColumn("[bold]scoring[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
    with ExitStack() as stack:
        sink: IO[str] | None = None
        if output == "-":
            sink = sys.stdout
        elif output is not None:
            try:
                sink = stack.enter_context(Path(output).open("a", encoding="utf-8"))
            except OSError as exc:
                fail(f"cannot write {output}: {exc}", 2)
        try:
            client = stack.enter_context(Client(key, url, tenant_id=tenant))
            task = bar.add_task("scoring", total=total, detail="")
            stack.enter_context(bar)
            run = client.score_many(
                iter_candidates(file),
                state=str(resume) if resume is not None else None,
                job_id=job_id,
                chunk_size=chunk_size,
                max_pending=max(max_pending, chunk_size),
                wait=not no_wait,
                on_progress=seen,
            )
            stack.callback(run.close)
            for outcome in run:
                outcomes += 1
                failures += not outcome.ok
                if sink is not None:
                    sink.write(orjson.dumps(outcome_json(outcome)).decode() + "\n")
                    sink.flush()
                bar.update(
                    task,
                    completed=min(total, counts.skipped + outcomes),
                    detail=_detail(counts),
                )
            bar.update(
                task, completed=min(total, counts.skipped + outcomes), detail=_detail(counts)
            )
        except KeyboardInterrupt:
            bar.stop()
            hint = (
                f"run again with --resume {resume} to continue"
                if resume is not None
                else "use --resume STATE to make a run resumable"
            )
            err_console.print(f"[bold yellow]interrupted:[/] {hint}")
            raise typer.Exit(130) from None
        except ClientError as exc:
            bar.stop()
            hint = f"; run again with --resume {resume} to continue" if resume is not None else ""
            fail(f"{exc}{hint}")
    err_console.print(
        f"{total} candidates: {counts.completed} completed, {counts.failed} failed, "
        f"{counts.rejected} rejected, {counts.accepted} submitted now, "
        f"{counts.skipped} skipped (done before)",
        highlight=False,
    )
    if failures:
        raise typer.Exit(1)


def _detail(p: BulkProgress) -> str:
    parts = [f"{p.pending} pending"]
    if p.failed:
        parts.append(f"[red]{p.failed} failed[/]")
    if p.rejected:
        parts.append(f"[red]{p.rejected} rejected[/]")
    return ", ".join(parts)
