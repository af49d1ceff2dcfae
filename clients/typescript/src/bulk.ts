/**
 * `score.many`: score many candidates within the limits.
 *
 * * Candidates go out in batches of `chunkSize` (100) on `POST /v1/score/batch` — one
 *   request of the per-minute `scoring` bucket per 100 candidates — up to the client's
 *   `maxConcurrent` batches at once, through the normal send loop (throttling, 429s,
 *   failover). The input is read lazily.
 * * Never one candidate twice: a key per candidate (`jobId/applicationId`) drops repeats,
 *   and each batch's `Idempotency-Key` is derived from the run id and the batch's
 *   content. A batch whose answer was lost (a refused connection, a restart) is sent
 *   again with the same key and the server replays the same jobs. Pass `runId` to make a
 *   rerun of the same input replay too.
 * * Outcomes: with `webhook: true` it only submits — each accepted candidate is a
 *   `queued` outcome and your webhook receiver collects the results. Otherwise it learns
 *   outcomes from a {@link StatusSource} — by default {@link jobStatuses}, which reads
 *   the awaited jobs 100 per request from `GET /v1/score?ids=` instead of one
 *   `GET /v1/score/{id}` per job per poll ({@link queueListing}, reading finished jobs
 *   from `GET /v1/queue` pages, is the other one offered).
 */
import type { Tollhouse } from "./client.js";
import { MAX_BATCH_ITEMS, MAX_STATUS_IDS, newIdempotencyKey, onAbort } from "./core.js";
import { ConfigurationError, NotFoundError, RateLimitError, ServerError, TransportError, ValidationError } from "./errors.js";
import type { BatchItem, Job, ScoreBatchResult, ScoreRequest } from "./types.js";
import { FINAL_STATUSES } from "./types.js";
import { subtle } from "./webhooks.js";

/** What became of one candidate. */
export interface ScoreOutcome {
  /** The candidate's key (default `"{jobId}/{applicationId}"`). */
  key: string;
  /**
   * `completed` or `failed` (the job finished), `rejected` (the API refused the body;
   * see `error`), or `queued` (accepted; webhook mode).
   */
  status: "completed" | "failed" | "rejected" | "queued";
  applicationId: string | undefined;
  jobId: string | undefined;
  scoringJobId?: string;
  /** The finished job with its `result` (polling mode). */
  job?: Job;
  /** Why it was rejected or failed. */
  error?: { code: string; message: string; status?: number };
  /** The candidate's position in the input. */
  index: number;
}

/** Counts of a run, passed to `onProgress` and returned at the end. */
export interface ManySummary {
  runId: string;
  /** Candidates read from the input. */
  read: number;
  /** Candidates dropped because the input repeated their key. */
  duplicates: number;
  accepted: number;
  rejected: number;
  completed: number;
  failed: number;
  /** Accepted jobs not finished yet (polling mode) or handed out as `queued` (webhook mode). */
  pending: number;
  /** Requests made to learn outcomes (pages of the queue listing, fallback reads). */
  statusRequests: number;
}

/** What a status source is asked. */
export interface StatusQuery {
  /** Jobs whose outcome is awaited. */
  ids: ReadonlySet<string>;
  /**
   * Unix seconds on the server's clock (estimated) before which none of them was
   * created: a listing newest first can stop there.
   */
  since: number;
  signal?: AbortSignal;
  /** Count one request made (for {@link ManySummary.statusRequests}). */
  counted: () => void;
}

/**
 * How `score.many` learns outcomes: the current state of as many of `query.ids` as it can
 * find — at least those that finished. Jobs it does not return are taken as unfinished.
 */
export type StatusSource = (client: Tollhouse, query: StatusQuery) => Promise<Job[]>;

/**
 * The default {@link StatusSource}: every awaited job, 100 per request, from
 * `GET /v1/score?ids=` — `ceil(ids / 100)` requests per read, each one unit of the
 * built-in policy's `scoring` bucket, like one poll. An id the server has no job of for
 * this key (`notFound`) is left out, as unfinished: the run's safety net reads it on its
 * own after `staleAfter` and reports its 404 as a `failed` outcome.
 */
export const jobStatuses: StatusSource = async (client, query) => {
  const ids = [...query.ids];
  const found: Job[] = [];
  for (let start = 0; start < ids.length; start += MAX_STATUS_IDS) {
    query.counted();
    const chunk = ids.slice(start, start + MAX_STATUS_IDS);
    const answer = await client.score.getMany(chunk, query.signal ? { signal: query.signal } : undefined);
    found.push(...answer.data);
  }
  return found;
};

/**
 * A {@link StatusSource} for servers without `GET /v1/score?ids=`: the finished jobs,
 * 100 per request, from `GET /v1/queue?status=completed|failed` (newest first), read
 * until every awaited job was seen or the listing reaches jobs created before `since`.
 * `GET /v1/queue` is in no bucket of the built-in policy.
 */
export const queueListing: StatusSource = async (client, query) => {
  const found: Job[] = [];
  const missing = new Set(query.ids);
  for (const status of ["completed", "failed"] as const) {
    let cursor: string | undefined;
    for (;;) {
      query.counted();
      const page = await client.queue.list({ status, limit: 100, cursor, signal: query.signal });
      let older = false;
      for (const job of page.data) {
        if (missing.delete(job.scoringJobId)) found.push(job);
        if (Date.parse(job.createdAt) / 1000 < query.since) older = true;
      }
      if (missing.size === 0) return found;
      if (older || !page.hasMore || !page.nextCursor) break;
      cursor = page.nextCursor;
    }
  }
  return found;
};

export interface ManyOptions {
  /** Called with each outcome as it is known (awaited: a slow consumer slows the run). */
  onResult?: (outcome: ScoreOutcome) => void | Promise<void>;
  /** Only submit: outcomes are `queued`, and your webhook receiver collects results. */
  webhook?: boolean;
  /** `jobId` for candidates that have none. */
  jobId?: string;
  /** Candidates per batch request (1–100, default 100). */
  chunkSize?: number;
  /** Polling mode: accepted jobs allowed to be unfinished at once (default 1000). */
  maxPending?: number;
  /** Seconds between status reads while outcomes arrive (default 1). */
  pollInterval?: number;
  /** Longest wait between status reads while nothing finishes (default 10). */
  maxPollInterval?: number;
  /**
   * Seconds after which a job the status source has not reported is read on its own
   * (`GET /v1/score/{id}`), beyond its estimated wait (default 120): a safety net.
   */
  staleAfter?: number;
  /** Goes into the batches' idempotency keys: the same run id and input replays the same jobs. */
  runId?: string;
  /** A candidate's key (default `"{jobId}/{applicationId}"`). */
  key?: (body: ScoreRequest) => string;
  onProgress?: (summary: ManySummary) => void;
  /** How outcomes are learned in polling mode (default {@link jobStatuses}). */
  statusSource?: StatusSource;
  /** Full rounds of the send loop's retries a batch gets before the run gives up (default 3). */
  submitAttempts?: number;
  signal?: AbortSignal;
}

interface Candidate {
  key: string;
  body: ScoreRequest;
  index: number;
}

interface Tracked {
  key: string;
  index: number;
  body: ScoreRequest;
  scoringJobId: string;
  /** Local Unix seconds after which it is read on its own if still unreported. */
  staleAt: number;
}

/** Clock skew and rounding allowed for between our submission and the job's createdAt. */
const SINCE_MARGIN = 120;

/** `42`, `a string`, `null`, `an object` …: what was passed, for an error message. */
function describeValue(value: unknown): string {
  if (value === null || value === undefined || typeof value === "number" || typeof value === "boolean") {
    return String(value);
  }
  if (typeof value === "string") return "a string";
  if (typeof value === "object") return "an object that is not iterable";
  return `a ${typeof value}`;
}

function defaultKey(body: ScoreRequest): string {
  return `${body.jobId}/${body.applicationId}`;
}

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.keys(value as object)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`);
    return `{${entries.join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

async function sha256(text: string): Promise<string> {
  const digest = await (await subtle()).digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function text(body: ScoreRequest, name: string): string | undefined {
  const value = body[name];
  return typeof value === "string" ? value : undefined;
}

/** One run of `score.many`. */
export class ScoreApiMany {
  private readonly summary: ManySummary;
  private readonly seen = new Set<string>();
  private readonly pending = new Map<string, Tracked>();
  private readonly chunkSize: number;
  private readonly maxPending: number;
  private readonly source: AsyncIterator<ScoreRequest> | Iterator<ScoreRequest>;
  private exhausted = false;
  private submitting = 0;
  /** Earliest server time (estimated) a pending job may have been created at. */
  private readonly createdFloor = new Map<string, number>();
  private wake: (() => void) | undefined;
  private failure: unknown;

  constructor(
    private readonly client: Tollhouse,
    candidates: Iterable<ScoreRequest> | AsyncIterable<ScoreRequest>,
    private readonly options: ManyOptions,
  ) {
    this.chunkSize = options.chunkSize ?? MAX_BATCH_ITEMS;
    if (!Number.isInteger(this.chunkSize) || this.chunkSize < 1 || this.chunkSize > MAX_BATCH_ITEMS) {
      throw new ConfigurationError(`chunkSize must be from 1 to ${MAX_BATCH_ITEMS} (the batch endpoint's limit)`);
    }
    this.maxPending = options.maxPending ?? 1000;
    if (this.maxPending < this.chunkSize) throw new ConfigurationError("maxPending must be at least chunkSize");
    const poll = options.pollInterval ?? 1;
    if (!(poll > 0) || (options.maxPollInterval ?? 10) < poll) {
      throw new ConfigurationError("need 0 < pollInterval <= maxPollInterval");
    }
    const given = candidates as unknown as Record<symbol, unknown> | null | undefined;
    const asyncIt = given?.[Symbol.asyncIterator];
    const syncIt = given?.[Symbol.iterator];
    if (typeof asyncIt === "function") {
      this.source = (asyncIt as () => AsyncIterator<ScoreRequest>).call(candidates);
    } else if (typeof syncIt === "function" && typeof candidates !== "string") {
      this.source = (syncIt as () => Iterator<ScoreRequest>).call(candidates);
    } else {
      throw new ConfigurationError(
        `score.many: candidates must be an Iterable or AsyncIterable of score requests ` +
          `(an array, a generator …), not ${describeValue(candidates)}`,
      );
    }
    this.summary = {
      runId: options.runId ?? newIdempotencyKey().slice(4, 20),
      read: 0,
      duplicates: 0,
      accepted: 0,
      rejected: 0,
      completed: 0,
      failed: 0,
      pending: 0,
      statusRequests: 0,
    };
  }

  private report(): void {
    this.summary.pending = this.options.webhook ? this.summary.accepted : this.pending.size;
    this.options.onProgress?.({ ...this.summary });
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /** Wait until something changes (a submission or sweep ends) or `seconds` pass. */
  private idle(seconds: number): Promise<void> {
    const signal = this.options.signal;
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<void>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        unwatch?.();
        this.wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, seconds * 1000);
      this.wake = done;
      const unwatch = signal
        ? onAbort(signal, () => {
            clearTimeout(timer);
            this.wake = undefined;
            reject(signal.reason);
          })
        : undefined;
    });
  }

  private async take(): Promise<Candidate[]> {
    const chunk: Candidate[] = [];
    const keyOf = this.options.key ?? defaultKey;
    while (chunk.length < this.chunkSize) {
      const next = await this.source.next();
      if (next.done) {
        this.exhausted = true;
        break;
      }
      const index = this.summary.read++;
      const body: ScoreRequest =
        this.options.jobId !== undefined && next.value.jobId === undefined
          ? { ...next.value, jobId: this.options.jobId }
          : next.value;
      const key = keyOf(body);
      if (this.seen.has(key)) {
        this.summary.duplicates += 1;
        continue;
      }
      this.seen.add(key);
      chunk.push({ key, body, index });
    }
    return chunk;
  }

  private async deliver(outcome: ScoreOutcome): Promise<void> {
    await this.options.onResult?.(outcome);
  }

  /** Send one batch until it is answered (same key every time); its outcomes. */
  private async submit(chunk: Candidate[]): Promise<void> {
    const digest = await sha256(this.summary.runId + "\n" + chunk.map((c) => canonical(c.body)).join("\n"));
    const idempotencyKey = `bulk-${this.summary.runId}-${digest.slice(0, 40)}`;
    const rounds = this.options.submitAttempts ?? 3;
    let answer: { headers: Record<string, string>; body: ScoreBatchResult } | undefined;
    for (let round = 1; answer === undefined; round++) {
      try {
        answer = await this.client.core.send<ScoreBatchResult>(
          {
            method: "POST",
            path: "/v1/score/batch",
            route: "POST /v1/score/batch",
            body: { items: chunk.map((c) => c.body) },
            idempotent: false,
            idempotencyKey,
          },
          this.client.tenantId,
          this.options.signal ? { signal: this.options.signal } : undefined,
        );
      } catch (error) {
        if (error instanceof ValidationError && error.code === "VALIDATION_FAILED") {
          // Every item was invalid: the batch as a whole is a 422 naming the first.
          for (const c of chunk) {
            this.summary.rejected += 1;
            await this.deliver({
              key: c.key,
              status: "rejected",
              applicationId: text(c.body, "applicationId"),
              jobId: text(c.body, "jobId"),
              error: { code: error.code, message: error.detail, status: error.status },
              index: c.index,
            });
          }
          return;
        }
        const passing =
          error instanceof TransportError || error instanceof ServerError || error instanceof RateLimitError;
        if (!passing || round >= rounds || this.options.signal?.aborted) throw error;
        // The same key again: the server replays the jobs if it had accepted the batch.
        await this.client.core.wait(this.client.core.retry.backoffMax / 2, this.options.signal);
      }
    }
    const date = Date.parse(answer.headers["date"] ?? "");
    const serverNow = Number.isNaN(date) ? Date.now() / 1000 : date / 1000;
    const now = Date.now() / 1000;
    for (const item of answer.body.results as BatchItem[]) {
      const c = chunk[item.index];
      if (c === undefined) continue;
      if (item.status === "error" || !("scoringJobId" in item)) {
        const err = "error" in item ? item.error : undefined;
        this.summary.rejected += 1;
        const outcome: ScoreOutcome = {
          key: c.key,
          status: "rejected",
          applicationId: text(c.body, "applicationId"),
          jobId: text(c.body, "jobId"),
          error: { code: err?.code ?? "ERROR", message: err?.message ?? "rejected" },
          index: c.index,
        };
        if (err?.status !== undefined) outcome.error!.status = err.status;
        await this.deliver(outcome);
        continue;
      }
      this.summary.accepted += 1;
      if (this.options.webhook) {
        await this.deliver({
          key: c.key,
          status: "queued",
          applicationId: text(c.body, "applicationId"),
          jobId: text(c.body, "jobId"),
          scoringJobId: item.scoringJobId,
          index: c.index,
        });
        continue;
      }
      this.pending.set(item.scoringJobId, {
        key: c.key,
        index: c.index,
        body: c.body,
        scoringJobId: item.scoringJobId,
        staleAt: now + (item.estimatedWaitSeconds ?? 0) + (this.options.staleAfter ?? 120),
      });
      this.createdFloor.set(item.scoringJobId, serverNow - SINCE_MARGIN);
    }
  }

  private async finish(tracked: Tracked, job: Job): Promise<void> {
    this.pending.delete(tracked.scoringJobId);
    this.createdFloor.delete(tracked.scoringJobId);
    const completed = job.status === "completed";
    if (completed) this.summary.completed += 1;
    else this.summary.failed += 1;
    const outcome: ScoreOutcome = {
      key: tracked.key,
      status: completed ? "completed" : "failed",
      applicationId: job.applicationId ?? text(tracked.body, "applicationId"),
      jobId: job.jobId ?? text(tracked.body, "jobId"),
      scoringJobId: job.scoringJobId,
      job,
      index: tracked.index,
    };
    if (job.error) outcome.error = { code: job.error.code, message: job.error.message };
    await this.deliver(outcome);
  }

  /** One status read: hand out what finished; true when something did. */
  private async sweep(): Promise<boolean> {
    if (this.pending.size === 0) return false;
    const source = this.options.statusSource ?? jobStatuses;
    const ids = new Set(this.pending.keys());
    let since = Infinity;
    for (const floor of this.createdFloor.values()) since = Math.min(since, floor);
    const query: StatusQuery = { ids, since, counted: () => (this.summary.statusRequests += 1) };
    if (this.options.signal) query.signal = this.options.signal;
    let progressed = false;
    for (const job of await source(this.client, query)) {
      const tracked = this.pending.get(job.scoringJobId);
      if (tracked !== undefined && FINAL_STATUSES.has(job.status)) {
        await this.finish(tracked, job);
        progressed = true;
      }
    }
    // The safety net: a job unreported long past its estimate is read on its own.
    const now = Date.now() / 1000;
    for (const tracked of [...this.pending.values()]) {
      if (tracked.staleAt > now) continue;
      tracked.staleAt = now + (this.options.staleAfter ?? 120);
      this.summary.statusRequests += 1;
      try {
        const job = await this.client.score.get(tracked.scoringJobId, this.options.signal ? { signal: this.options.signal } : undefined);
        if (FINAL_STATUSES.has(job.status)) {
          await this.finish(tracked, job);
          progressed = true;
        } else {
          this.createdFloor.set(tracked.scoringJobId, Date.parse(job.createdAt) / 1000 - 1);
        }
      } catch (error) {
        if (!(error instanceof NotFoundError)) throw error;
        // Gone for this key's org: report it rather than wait forever.
        this.pending.delete(tracked.scoringJobId);
        this.createdFloor.delete(tracked.scoringJobId);
        this.summary.failed += 1;
        await this.deliver({
          key: tracked.key,
          status: "failed",
          applicationId: text(tracked.body, "applicationId"),
          jobId: text(tracked.body, "jobId"),
          scoringJobId: tracked.scoringJobId,
          error: { code: error.code, message: error.detail, status: error.status },
          index: tracked.index,
        });
        progressed = true;
      }
    }
    return progressed;
  }

  /** Submit everything (and, polling, learn every outcome); the final counts. */
  async run(): Promise<ManySummary> {
    const limit = Math.max(1, this.client.core.maxConcurrent);
    const inFlight = new Set<Promise<void>>();
    const launch = (chunk: Candidate[]): void => {
      this.submitting += chunk.length;
      const task: Promise<void> = this.submit(chunk)
        .catch((error: unknown) => {
          this.failure ??= error;
        })
        .finally(() => {
          this.submitting -= chunk.length;
          inFlight.delete(task);
          this.report();
          this.notify();
        });
      inFlight.add(task);
    };
    const pollInterval = this.options.pollInterval ?? 1;
    const maxPollInterval = this.options.maxPollInterval ?? 10;
    let interval = pollInterval;
    let nextSweep = Date.now() / 1000 + pollInterval;
    let sweepFailures = 0;
    try {
      for (;;) {
        if (this.failure !== undefined) throw this.failure;
        if (this.options.signal?.aborted) throw this.options.signal.reason;
        // Submit while there is input, room in flight, and (polling) room among pending.
        while (
          !this.exhausted &&
          inFlight.size < limit &&
          (this.options.webhook || this.pending.size + this.submitting + this.chunkSize <= this.maxPending)
        ) {
          const chunk = await this.take();
          this.report();
          if (chunk.length) launch(chunk);
        }
        const now = Date.now() / 1000;
        if (!this.options.webhook && this.pending.size > 0 && now >= nextSweep) {
          let progressed = false;
          try {
            progressed = await this.sweep();
            sweepFailures = 0;
          } catch (error) {
            // A failed read is retried at the next sweep; only repeated failures end the run.
            if (!(error instanceof TransportError || error instanceof ServerError || error instanceof RateLimitError)) throw error;
            if (++sweepFailures >= (this.options.submitAttempts ?? 3)) throw error;
          }
          this.report();
          interval = progressed ? pollInterval : Math.min(interval * 1.5, maxPollInterval);
          nextSweep = Date.now() / 1000 + interval;
          continue;
        }
        if (this.exhausted && inFlight.size === 0 && (this.options.webhook || this.pending.size === 0)) break;
        const wait = this.pending.size > 0 && !this.options.webhook ? Math.max(nextSweep - now, 0.001) : maxPollInterval;
        await this.idle(wait);
      }
      this.report();
      return { ...this.summary };
    } finally {
      this.notify();
      await Promise.allSettled([...inFlight]);
    }
  }
}

