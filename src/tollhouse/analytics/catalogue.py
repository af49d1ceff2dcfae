"""The metrics catalogue shape's catalogue (docs/api-shapes.md), as data.

Every metric is a :class:`Metric`: where its rows come from (product events of some
types, the API-call rollups, or the raw call log), a filter, what it measures
(:class:`Measure`: count, distinct count, sum, average, ratio, percentile, or the count
of entities whose latest state matches), what it groups by (time or fields) and how it is
shown (simple, table, barchart, horizontal-barchart, paginated table, with prefix and
suffix). One compiler (:mod:`tollhouse.analytics.compiler`) turns any of them into SQL;
adding a metric is adding an entry here.

Definitions where the shape is terse (docs/analytics.md explains each choice):

* a **run** is a distinct ``run_id`` of ``flow_run`` events (a run may send ``running``
  and then ``succeeded``/``failed``; it counts once); a failed run has a ``failed`` event;
* **live** metrics (``active_runs``, ``active_triggers``) count entities whose latest
  event up to ``time_end`` is in the state (running; enabled), whatever ``time_start``;
* **cost** excludes cached LLM calls (as the shape notes); tokens count every call;
* **conversation** LLM usage is the ``llm_call`` events that carry a ``conversation_id``;
* **cost per run** is the cost of LLM calls made by flows (``tool = "flow"``) over runs.

:data:`ADDITIONS` are tollhouse's own metrics beyond the shape's (calls by status class,
latency percentiles, fair-use flags and each signal's subjects), defined and answered
the same way; the fair-use ones read ``fair_use_flags`` (source ``fair_use``: the
windows flagged by the scheduled pass that overlap the range, :mod:`tollhouse.fairuse.run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Output = Literal["simple", "table", "barchart", "horizontal-barchart", "paginated-table"]
Source = Literal["events", "calls", "call_log", "fair_use"]
Aggregation = Literal[
    "count", "count_distinct", "sum", "avg", "ratio", "percentile", "latest_count"
]
Operator = Literal["=", "!=", "in", "present", "true", "not_true"]

#: The group-by name that means "the time bucket" (hourly up to 3 days, daily beyond).
TIME = "time"


@dataclass(frozen=True, slots=True)
class Cond:
    """One filter condition on a field: ``field op value``."""

    field: str
    op: Operator
    value: str | tuple[str, ...] | None = None


def eq(name: str, value: str) -> Cond:
    """``name = value``."""
    return Cond(name, "=", value)


def one_of(name: str, *values: str) -> Cond:
    """``name IN values``."""
    return Cond(name, "in", values)


def present(name: str) -> Cond:
    """``name IS NOT NULL``."""
    return Cond(name, "present")


def true(name: str) -> Cond:
    """``name`` is true."""
    return Cond(name, "true")


def not_true(name: str) -> Cond:
    """``name`` is false or missing."""
    return Cond(name, "not_true")


@dataclass(frozen=True, slots=True)
class Measure:
    """One value computed per group.

    Args:
        name: the series name (barchart), heading (table) or nothing (simple).
        agg: the aggregation.
        fields: the field(s) aggregated; ``sum`` adds several (``tokens_in + tokens_out``);
            ``latest_count`` takes the entity field.
        event_type: restricts the measure to one event type (metrics over several types).
        where: conditions of this measure only (conditional aggregation); for
            ``latest_count``, the state the latest event must be in.
        of: numerator and denominator of a ``ratio``.
        q: the quantile of a ``percentile`` (0.5 for the median).
        decimals: rounding of the reported value (default: the field's).
    """

    name: str
    agg: Aggregation
    fields: tuple[str, ...] = ()
    event_type: str | None = None
    where: tuple[Cond, ...] = ()
    of: tuple[Measure, Measure] | None = None
    q: float | None = None
    decimals: int | None = None


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric of ``GET /v1/analytics/{metric}``.

    Args:
        name: the path parameter.
        description: one line, as the shape words it.
        output: the response ``type``.
        source: product events, API-call rollups or the raw call log.
        measures: what is computed; a simple metric reports its first measure.
        event_types: which product event types are read (events source).
        where: conditions every row must meet.
        group_by: ``("time",)`` for bars per bucket, field names for table rows.
        headings: table headings of the ``group_by`` fields (measure names follow).
        prefix: simple metrics: shown before the value (``$``).
        suffix: simple metrics: shown after the value (`` runs``).
        prefixes: table metrics: per heading.
        suffixes: table metrics: per heading.
        columns: paginated tables: (heading, field) per column.
    """

    name: str
    description: str
    output: Output
    source: Source
    measures: tuple[Measure, ...] = ()
    event_types: tuple[str, ...] = ()
    where: tuple[Cond, ...] = ()
    group_by: tuple[str, ...] = ()
    headings: tuple[str, ...] = ()
    prefix: str | None = None
    suffix: str | None = None
    prefixes: dict[str, str] | None = field(default=None, hash=False)
    suffixes: dict[str, str] | None = field(default=None, hash=False)
    columns: tuple[tuple[str, str], ...] = ()


# ---- building blocks ------------------------------------------------------------------------

RUNS = Measure("runs", "count_distinct", ("run_id",))
TERMINAL = one_of("status", "succeeded", "failed")
TOKENS = ("tokens_in", "tokens_out")
COST = Measure("Cost", "sum", ("cost",), where=(not_true("cached"),))
CONVERSATION = (present("conversation_id"),)
DOCUMENTS = Measure("Documents", "count_distinct", ("document_id",))


def _runs(name: str, description: str, *where: Cond, suffix: str = " runs") -> Metric:
    return Metric(
        name, description, "simple", "events", (RUNS,), ("flow_run",), where, suffix=suffix
    )


def _simple(
    name: str,
    description: str,
    types: tuple[str, ...],
    measure: Measure,
    *where: Cond,
    prefix: str | None = None,
    suffix: str | None = None,
) -> Metric:
    return Metric(
        name,
        description,
        "simple",
        "events",
        (measure,),
        types,
        where,
        prefix=prefix,
        suffix=suffix,
    )


def _table(
    name: str,
    description: str,
    types: tuple[str, ...],
    by: str,
    heading: str,
    measures: tuple[Measure, ...],
    *where: Cond,
    prefixes: dict[str, str] | None = None,
) -> Metric:
    return Metric(
        name,
        description,
        "table",
        "events",
        measures,
        types,
        where,
        group_by=(by,),
        headings=(heading,),
        prefixes=prefixes,
    )


def _bars(
    name: str, description: str, types: tuple[str, ...], measures: tuple[Measure, ...], *w: Cond
) -> Metric:
    return Metric(name, description, "barchart", "events", measures, types, w, group_by=(TIME,))


def _tokens_cost(name: str, description: str, by: str, heading: str, *where: Cond) -> Metric:
    return _table(
        name,
        description,
        ("llm_call",),
        by,
        heading,
        (Measure("Tokens", "sum", TOKENS), COST),
        *where,
        prefixes={"Cost": "$"},
    )


def _involved(name: str, description: str, signal: str, unit: str) -> Metric:
    """One fair-use signal's subjects (jobIds or keys) summed over its flagged windows."""
    return Metric(
        name,
        description,
        "simple",
        "fair_use",
        (Measure(unit, "sum", ("involved",)),),
        where=(eq("signal", signal),),
        suffix=f" {unit}",
    )


_METRICS: tuple[Metric, ...] = (
    # ---- execution ------------------------------------------------------------------------
    _runs("flow_runs", "Total flow executions in the time range"),
    _runs("trigger_runs", "Executions initiated by triggers", eq("source", "trigger")),
    _runs("manual_runs", "Executions initiated manually (editor or API)", eq("source", "manual")),
    _runs("agent_runs", "Executions initiated by agents", eq("source", "agent")),
    _simple(
        "active_users",
        "Distinct users who ran flows",
        ("flow_run",),
        Measure("users", "count_distinct", ("user",)),
        suffix=" users",
    ),
    _simple(
        "active_runs",
        "Flows currently executing (live count)",
        ("flow_run",),
        Measure("runs", "latest_count", ("run_id",), where=(eq("status", "running"),)),
        suffix=" runs",
    ),
    _simple(
        "active_triggers",
        "Currently enabled triggers",
        ("trigger",),
        Measure("triggers", "latest_count", ("trigger_id",), where=(true("enabled"),)),
        suffix=" triggers",
    ),
    _runs("errors", "Number of failed runs", eq("status", "failed"), suffix=" errors"),
    _simple(
        "average_run_time",
        "Mean flow execution duration",
        ("flow_run",),
        Measure("duration", "avg", ("duration_ms",)),
        TERMINAL,
        suffix=" ms",
    ),
    _bars(
        "flow_runs_distribution",
        "Run count over time, split by source (manual, trigger, agent)",
        ("flow_run",),
        tuple(
            Measure(s, "count_distinct", ("run_id",), where=(eq("source", s),))
            for s in ("manual", "trigger", "agent")
        ),
    ),
    _table("flow_per_user", "Run count per user", ("flow_run",), "user", "User", (RUNS,)),
    _bars(
        "errors_over_time",
        "Failed runs over time",
        ("flow_run",),
        (Measure("errors", "count_distinct", ("run_id",)),),
        eq("status", "failed"),
    ),
    _bars(
        "run_time_over_time",
        "Execution duration over time (P25, P50, P90 percentiles)",
        ("flow_run",),
        tuple(
            Measure(f"P{round(q * 100)}", "percentile", ("duration_ms",), q=q)
            for q in (0.25, 0.5, 0.9)
        ),
        TERMINAL,
    ),
    # ---- cost and tokens ----------------------------------------------------------------------
    _simple(
        "ai_models_total_cost",
        "Estimated total LLM cost across all models",
        ("llm_call",),
        COST,
        prefix="$",
    ),
    _simple(
        "ai_models_total_tokens",
        "Total tokens consumed across all models",
        ("llm_call",),
        Measure("tokens", "sum", TOKENS),
        suffix=" tokens",
    ),
    _simple(
        "average_cost_per_run",
        "Mean estimated cost per flow execution",
        ("llm_call", "flow_run"),
        Measure(
            "cost_per_run",
            "ratio",
            of=(
                Measure(
                    "cost", "sum", ("cost",), "llm_call", (eq("tool", "flow"), not_true("cached"))
                ),
                Measure("runs", "count_distinct", ("run_id",), "flow_run"),
            ),
            decimals=6,
        ),
        prefix="$",
    ),
    _tokens_cost("tokens_cost", "Tokens and estimated cost grouped by LLM model", "model", "Model"),
    _tokens_cost(
        "tokens_cost_by_workflow", "Tokens and estimated cost per workflow", "workflow", "Workflow"
    ),
    _tokens_cost("tokens_cost_by_user", "Tokens and estimated cost per user", "user", "User"),
    _tokens_cost("tokens_cost_by_node", "Tokens and estimated cost per node", "node", "Node"),
    _simple(
        "model_tokens_total_cost",
        "Estimated total cost (non-cached tokens only)",
        ("llm_call",),
        COST,
        prefix="$",
    ),
    _table(
        "ai_operations_per_tool",
        "AI operation count grouped by tool type (flow, agent, KB)",
        ("llm_call",),
        "tool",
        "Tool",
        (Measure("Operations", "count"),),
    ),
    _table(
        "model_tokens_per_tool",
        "Token usage grouped by tool type",
        ("llm_call",),
        "tool",
        "Tool",
        (Measure("Tokens", "sum", TOKENS),),
    ),
    _table(
        "ai_operations_per_user",
        "AI operation count per user",
        ("llm_call",),
        "user",
        "User",
        (Measure("Operations", "count"),),
    ),
    _table(
        "model_tokens_per_user",
        "Token usage per user",
        ("llm_call",),
        "user",
        "User",
        (Measure("Tokens", "sum", TOKENS),),
    ),
    # ---- conversations ------------------------------------------------------------------------
    _simple(
        "conversations_started",
        "Total conversations initiated",
        ("conversation_started",),
        Measure("conversations", "count"),
        suffix=" conversations",
    ),
    _simple(
        "messages_sent",
        "Total messages sent (user + agent)",
        ("message_sent",),
        Measure("messages", "count"),
        suffix=" messages",
    ),
    _simple(
        "messages_per_conversation",
        "Average messages per conversation",
        ("message_sent",),
        Measure(
            "messages_per_conversation",
            "ratio",
            of=(
                Measure("messages", "count"),
                Measure("conversations", "count_distinct", ("conversation_id",)),
            ),
            decimals=2,
        ),
        suffix=" messages",
    ),
    _simple(
        "conversation_users",
        "Distinct users who started conversations",
        ("conversation_started",),
        Measure("users", "count_distinct", ("user",)),
        suffix=" users",
    ),
    _bars(
        "conversations_started_over_time",
        "Conversations started over time",
        ("conversation_started",),
        (Measure("conversations", "count"),),
    ),
    _bars(
        "messages_sent_over_time",
        "Messages sent over time",
        ("message_sent",),
        (Measure("messages", "count"),),
    ),
    _table(
        "conversations_started_by_user",
        "Conversations started per user",
        ("conversation_started",),
        "user",
        "User",
        (Measure("Conversations", "count"),),
    ),
    _table(
        "messages_sent_by_user",
        "Messages sent per user",
        ("message_sent",),
        "user",
        "User",
        (Measure("Messages", "count"),),
    ),
    _tokens_cost(
        "conversation_tokens_cost",
        "Token usage and cost per LLM model for conversations",
        "model",
        "Model",
        *CONVERSATION,
    ),
    _tokens_cost(
        "conversation_tokens_cost_by_user",
        "Conversation token usage and cost per user",
        "user",
        "User",
        *CONVERSATION,
    ),
    _simple(
        "conversation_chat_costs_total",
        "Estimated total cost of all conversation LLM calls",
        ("llm_call",),
        COST,
        *CONVERSATION,
        prefix="$",
    ),
    # ---- API usage (metering tables) ----------------------------------------------------------
    Metric(
        "api_calls_per_date",
        "API calls made per day/hour",
        "barchart",
        "calls",
        (Measure("calls", "sum", ("calls",)),),
        group_by=(TIME,),
    ),
    Metric(
        "api_calls_per_endpoint",
        "API call count grouped by endpoint",
        "table",
        "calls",
        (Measure("Calls", "sum", ("calls",)),),
        group_by=("route", "method"),
        headings=("Endpoint", "Method"),
    ),
    Metric(
        "api_calls_log",
        "Detailed log of recent API calls with endpoint, method, response code, and duration",
        "paginated-table",
        "call_log",
        columns=(
            ("Endpoint", "route"),
            ("Method", "method"),
            ("Status", "status"),
            ("Duration", "duration_ms"),
        ),
    ),
    # ---- knowledge bases ----------------------------------------------------------------------
    _simple(
        "kb_total_documents",
        "Total documents across all knowledge bases",
        ("kb_document",),
        DOCUMENTS,
        suffix=" documents",
    ),
    _simple(
        "kb_processed_successfully",
        "Documents successfully ingested and indexed",
        ("kb_document",),
        DOCUMENTS,
        eq("status", "processed"),
        suffix=" documents",
    ),
    _simple(
        "kb_failed_documents",
        "Documents that failed ingestion",
        ("kb_document",),
        DOCUMENTS,
        eq("status", "failed"),
        suffix=" documents",
    ),
    _simple(
        "kb_contributors",
        "Distinct users who uploaded documents",
        ("kb_document",),
        Measure("users", "count_distinct", ("user",)),
        suffix=" users",
    ),
    _bars(
        "kb_documents_over_time",
        "Document ingestion count over time",
        ("kb_document",),
        (Measure("documents", "count_distinct", ("document_id",)),),
    ),
    _table(
        "kb_documents_per_kb",
        "Document count per knowledge base",
        ("kb_document",),
        "kb",
        "Knowledge Base",
        (DOCUMENTS,),
    ),
    _table(
        "kb_documents_by_user",
        "Document count per user",
        ("kb_document",),
        "user",
        "User",
        (DOCUMENTS,),
    ),
    _table(
        "kb_document_types",
        "Document count grouped by file type (PDF, Word, Excel, etc.)",
        ("kb_document",),
        "file_type",
        "File Type",
        (DOCUMENTS,),
    ),
    _table(
        "kb_user_activity",
        "Per-user breakdown of upload activity",
        ("kb_document",),
        "user",
        "User",
        (
            Measure("Uploaded", "count_distinct", ("document_id",)),
            Measure(
                "Processed", "count_distinct", ("document_id",), where=(eq("status", "processed"),)
            ),
            Measure("Failed", "count_distinct", ("document_id",), where=(eq("status", "failed"),)),
            Measure("Knowledge Bases", "count_distinct", ("kb",)),
        ),
    ),
    _table(
        "kb_overview",
        "Summary table across all knowledge bases",
        ("kb_document",),
        "kb",
        "Knowledge Base",
        (
            DOCUMENTS,
            Measure(
                "Processed", "count_distinct", ("document_id",), where=(eq("status", "processed"),)
            ),
            Measure("Failed", "count_distinct", ("document_id",), where=(eq("status", "failed"),)),
            Measure("Contributors", "count_distinct", ("user",)),
        ),
    ),
)

#: Tollhouse's additions for the API-usage dashboard (same engine, same response shapes).
ADDITIONS: tuple[Metric, ...] = (
    Metric(
        "api_calls_by_status_class",
        "API calls over time by response status class (2xx, 3xx, 4xx, 5xx, unknown)",
        "barchart",
        "calls",
        (
            *(
                Measure(f"{k}xx", "sum", (f"status_{k}xx",))
                for k in (2, 3, 4, 5)  # 4xx includes 429s; error rate = 5xx / all five
            ),
            # Forward-auth calls whose access-log line never came (status 0).
            Measure("unknown", "sum", ("status_unknown",)),
        ),
        group_by=(TIME,),
    ),
    Metric(
        "api_latency_percentiles",
        "API call duration over time (P50, P90, P99 percentiles, ms)",
        "barchart",
        "calls",
        tuple(
            Measure(f"P{round(q * 100)}", "percentile", ("duration_ms",), q=q)
            for q in (0.5, 0.9, 0.99)
        ),
        group_by=(TIME,),
    ),
    Metric(
        "fair_use_flags",
        "Fair-use signals flagged, per signal and action (windows flagged, jobs or keys involved)",
        "table",
        "fair_use",
        (Measure("Flags", "count"), Measure("Involved", "sum", ("involved",))),
        group_by=("signal", "action"),
        headings=("Signal", "Action"),
    ),
    _involved(
        "regeneration_loops",
        "Jobs whose criteria or questions were generated more than the threshold times "
        "in a window (summed over the windows flagged)",
        "regeneration_loop",
        "jobs",
    ),
    _involved(
        "unscored_criteria_jobs",
        "Jobs whose criteria were generated but never scored within the rule's after time "
        "(summed over the windows flagged)",
        "criteria_without_scoring",
        "jobs",
    ),
    _involved(
        "polling_keys",
        "Keys that polled for scoring results instead of taking webhooks "
        "(summed over the windows flagged)",
        "polling_instead_of_webhooks",
        "keys",
    ),
    _involved(
        "early_retry_keys",
        "Keys that called again after a 429 before its Retry-After elapsed "
        "(summed over the windows flagged)",
        "ignored_retry_after",
        "keys",
    ),
    _involved(
        "burst_submission_keys",
        "Keys whose score submissions were refused with 429 in the worst burst window "
        "(summed over the windows flagged)",
        "burst_submission",
        "keys",
    ),
)

#: Every metric of the metrics catalogue shape and tollhouse's :data:`ADDITIONS`, by name.
CATALOGUE: dict[str, Metric] = {m.name: m for m in (*_METRICS, *ADDITIONS)}
