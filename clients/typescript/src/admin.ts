/**
 * `AdminClient`: the provider API (`/v1/admin/*`) with an admin token, as the Python
 * SDK's `AdminClient` (the same namespaces and names, camelCase). It sends through the
 * same send loop as `Tollhouse` — retries, backoff, several base URLs, typed errors —
 * without throttling (no bucket applies to the provider API).
 */
import { isoTime, seg } from "./client.js";
import { type ClientOptions, Core, type Operation, type RequestOptions } from "./core.js";
import { ConfigurationError } from "./errors.js";
import type {
  AdminCreatedKey,
  AdminFairUse,
  AdminKey,
  AdminKeyPage,
  AdminNewKey,
  AdminOrg,
  AdminOrgLimits,
  AdminOrgPage,
  AdminOverride,
  AdminRotatedKey,
  AdminWebhookEndpoint,
  AdminWebhookEndpointCreated,
  AuditEntry,
  AuditPage,
  Environment,
  Role,
  Time,
  TimeRange,
  WebhookDelivery,
} from "./types.js";

/** The variable an admin client reads its token from (Node). */
export const ENV_ADMIN_TOKEN = "TOLLHOUSE_ADMIN_TOKEN";
const ADMIN = "/v1/admin";

export interface AdminClientOptions extends Omit<ClientOptions, "apiKey" | "tenantId" | "throttle"> {
  /** An admin token; default `TOLLHOUSE_ADMIN_TOKEN` (Node). Never an org's key. */
  adminToken?: string;
}

/** One page of a cursor-paged listing. */
export interface PageOptions extends RequestOptions {
  limit?: number;
  cursor?: string;
}

function env(name: string): string | undefined {
  const process = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  return process?.env?.[name] || undefined;
}

/** A key to make: `expiresAt` may be a Date or Unix seconds here. */
export type AdminKeyInput = Omit<AdminNewKey, "role" | "expiresAt"> & { role?: Role; expiresAt?: Time };

function keyBody(key: AdminKeyInput): AdminNewKey {
  const body: Record<string, unknown> = { ...key, role: key.role ?? "member" };
  if (key.expiresAt !== undefined) body.expiresAt = isoTime(key.expiresAt, "expiresAt");
  return body as AdminNewKey;
}

/**
 * A client of the provider API.
 *
 * ```ts
 * const admin = new AdminClient({ adminToken: "adm_…", baseURL: "https://api.example.com" });
 * const org = await admin.orgs.create("acme", { name: "Acme", firstKey: { environment: "SANDBOX", role: "root" } });
 * console.log(org.firstKey?.key);   // the secret, this once
 * ```
 */
export class AdminClient {
  /** @internal */
  readonly core: Core;
  readonly orgs: OrgsAdmin;
  readonly keys: KeysAdmin;
  readonly limits: LimitsAdmin;
  readonly audit: AuditAdmin;
  readonly webhooks: WebhooksAdmin;

  constructor(options: AdminClientOptions = {}) {
    const token = options.adminToken ?? env(ENV_ADMIN_TOKEN);
    if (!token) {
      throw new ConfigurationError(
        `No admin token: pass { adminToken } or set ${ENV_ADMIN_TOKEN} (or create one with \`tollhouse admin-tokens create\`).`,
      );
    }
    if (token.startsWith("sk_")) {
      throw new ConfigurationError("An org's API key is not an admin token (the provider API refuses it).");
    }
    const { adminToken: _, ...rest } = options;
    this.core = new Core({ ...rest, apiKey: token, throttle: false });
    this.orgs = new OrgsAdmin(this);
    this.keys = new KeysAdmin(this);
    this.limits = new LimitsAdmin(this);
    this.audit = new AuditAdmin(this);
    this.webhooks = new WebhooksAdmin(this);
  }

  /** The base URLs, in rotation order. */
  get baseURLs(): readonly string[] {
    return this.core.baseURLs.urls;
  }

  /** @internal Send one operation; its checked body. */
  async call<T>(op: Operation, options?: RequestOptions): Promise<T> {
    return (await this.core.send<T>(op, undefined, options)).body;
  }

  /** @internal Every page from `first`, following `nextCursor`. */
  async *pages<P extends { hasMore: boolean; nextCursor: string | null }>(
    op: (cursor: string | undefined) => Operation,
    options?: RequestOptions,
  ): AsyncGenerator<P> {
    let cursor: string | undefined;
    for (;;) {
      const page: P = await this.call<P>(op(cursor), options);
      yield page;
      if (!page.hasMore || !page.nextCursor) return;
      cursor = page.nextCursor;
    }
  }
}

function paging(params: PageOptions | undefined, cursor = params?.cursor): Record<string, string | number | undefined> {
  return { limit: params?.limit, cursor };
}

/** `admin.orgs`. */
export class OrgsAdmin {
  constructor(private readonly a: AdminClient) {}

  /**
   * `POST /v1/admin/orgs`: an org, and its first key with it when `firstKey` is given —
   * both or neither. The key's secret is `org.firstKey.key`, this once. A taken id is a
   * 409 `APIError`. Not sent again once it may have been sent.
   */
  create(orgId: string, params: { name?: string; firstKey?: AdminKeyInput } & RequestOptions = {}): Promise<AdminOrg> {
    const body: Record<string, unknown> = { id: orgId };
    if (params.name !== undefined) body.name = params.name;
    if (params.firstKey !== undefined) body.firstKey = keyBody(params.firstKey);
    return this.a.call({ method: "POST", path: `${ADMIN}/orgs`, route: "POST /v1/admin/orgs", body, idempotent: false }, params);
  }

  private listOp(params: PageOptions | undefined, cursor?: string): Operation {
    return { method: "GET", path: `${ADMIN}/orgs`, route: "GET /v1/admin/orgs", query: paging(params, cursor), idempotent: true };
  }

  /** `GET /v1/admin/orgs`: one page, newest first. */
  list(params?: PageOptions): Promise<AdminOrgPage> {
    return this.a.call(this.listOp(params), params);
  }

  /** Every page of orgs, following `nextCursor`. */
  iter(params?: Omit<PageOptions, "cursor">): AsyncGenerator<AdminOrgPage> {
    return this.a.pages((cursor) => this.listOp(params, cursor), params);
  }

  /** `GET /v1/admin/orgs/{orgId}`. */
  get(orgId: string, options?: RequestOptions): Promise<AdminOrg> {
    const path = `${ADMIN}/orgs/${seg(orgId, "orgId")}`;
    return this.a.call({ method: "GET", path, route: "GET /v1/admin/orgs/{orgId}", idempotent: true }, options);
  }

  /** `PATCH /v1/admin/orgs/{orgId}`: rename, suspend (its keys get 403 `ORG_SUSPENDED`) or reinstate. */
  update(orgId: string, changes: { name?: string; suspended?: boolean } & RequestOptions): Promise<AdminOrg> {
    const body: Record<string, unknown> = {};
    if (changes.name !== undefined) body.name = changes.name;
    if (changes.suspended !== undefined) body.suspended = changes.suspended;
    const path = `${ADMIN}/orgs/${seg(orgId, "orgId")}`;
    return this.a.call({ method: "PATCH", path, route: "PATCH /v1/admin/orgs/{orgId}", body, idempotent: true }, changes);
  }

  /**
   * `GET /v1/admin/orgs/{orgId}/fair-use`: the org's fair-use signals in `environment` over
   * `timeRange` (default `24h`), ending now — what its own keys of that environment read
   * from `GET /v1/analytics/fair-use`, with `org`.
   */
  fairUse(orgId: string, params: { environment: Environment; timeRange?: TimeRange } & RequestOptions): Promise<AdminFairUse> {
    return this.a.call(
      {
        method: "GET",
        path: `${ADMIN}/orgs/${seg(orgId, "orgId")}/fair-use`,
        route: "GET /v1/admin/orgs/{orgId}/fair-use",
        query: { environment: params.environment, timeRange: params.timeRange ?? "24h" },
        idempotent: true,
      },
      params,
    );
  }
}

/** `admin.keys`. */
export class KeysAdmin {
  constructor(private readonly a: AdminClient) {}

  /** `POST /v1/admin/orgs/{orgId}/keys`: a key with its secret (`key`) this once. */
  create(orgId: string, key: AdminKeyInput & RequestOptions): Promise<AdminCreatedKey> {
    const { signal, ...fields } = key;
    return this.a.call(
      {
        method: "POST",
        path: `${ADMIN}/orgs/${seg(orgId, "orgId")}/keys`,
        route: "POST /v1/admin/orgs/{orgId}/keys",
        body: keyBody(fields),
        idempotent: false, // each call makes one more key
      },
      signal === undefined ? undefined : { signal },
    );
  }

  private listOp(orgId: string, params: (PageOptions & { environment?: Environment }) | undefined, cursor?: string): Operation {
    return {
      method: "GET",
      path: `${ADMIN}/orgs/${seg(orgId, "orgId")}/keys`,
      route: "GET /v1/admin/orgs/{orgId}/keys",
      query: { ...paging(params, cursor), environment: params?.environment },
      idempotent: true,
    };
  }

  /** `GET /v1/admin/orgs/{orgId}/keys`: one page, newest first, never a secret, with `lastUsedAt`. */
  list(orgId: string, params?: PageOptions & { environment?: Environment }): Promise<AdminKeyPage> {
    return this.a.call(this.listOp(orgId, params), params);
  }

  /** Every page of an org's keys, following `nextCursor`. */
  iter(orgId: string, params?: Omit<PageOptions, "cursor"> & { environment?: Environment }): AsyncGenerator<AdminKeyPage> {
    return this.a.pages((cursor) => this.listOp(orgId, params, cursor), params);
  }

  /** `DELETE /v1/admin/keys/{keyId}`: revoke it; the key as it is now. */
  revoke(keyId: string, options?: RequestOptions): Promise<AdminKey> {
    const path = `${ADMIN}/keys/${seg(keyId, "keyId")}`;
    return this.a.call({ method: "DELETE", path, route: "DELETE /v1/admin/keys/{keyId}", idempotent: true }, options);
  }

  /** `POST /v1/admin/keys/{keyId}/rotate`: a new key (secret once) replacing it; the old one works for `overlapSeconds`. */
  rotate(keyId: string, options?: { overlapSeconds?: number } & RequestOptions): Promise<AdminRotatedKey> {
    return this.a.call(
      {
        method: "POST",
        path: `${ADMIN}/keys/${seg(keyId, "keyId")}/rotate`,
        route: "POST /v1/admin/keys/{keyId}/rotate",
        body: options?.overlapSeconds === undefined ? {} : { overlapSeconds: options.overlapSeconds },
        idempotent: false, // a second rotation would replace the new key too
      },
      options,
    );
  }
}

/** `admin.limits`: an org's effective limits and its overrides. */
export class LimitsAdmin {
  constructor(private readonly a: AdminClient) {}

  /** `GET /v1/admin/orgs/{orgId}/limits`: each bucket and each in-flight pool (policy limit, override, key overrides). */
  get(orgId: string, options?: RequestOptions): Promise<AdminOrgLimits> {
    const path = `${ADMIN}/orgs/${seg(orgId, "orgId")}/limits`;
    return this.a.call({ method: "GET", path, route: "GET /v1/admin/orgs/{orgId}/limits", idempotent: true }, options);
  }

  /**
   * `PUT /v1/admin/orgs/{orgId}/limits/{bucket}`: the org's limit of a bucket or an
   * in-flight pool (`bucket`: either's name) in every environment, in one (`environment`:
   * SANDBOX or PRODUCTION), or one key's (`keyId`; never with `environment`: a key has its
   * own). The key's override > the org's for the key's environment > the org's for every
   * environment > the policy.
   */
  set(
    orgId: string,
    bucket: string,
    limit: number,
    options?: { keyId?: string; environment?: Environment } & RequestOptions,
  ): Promise<AdminOverride> {
    const body: Record<string, unknown> = { limit };
    if (options?.keyId !== undefined) body.keyId = options.keyId;
    if (options?.environment !== undefined) body.environment = options.environment;
    return this.a.call(
      {
        method: "PUT",
        path: `${ADMIN}/orgs/${seg(orgId, "orgId")}/limits/${seg(bucket, "bucket")}`,
        route: "PUT /v1/admin/orgs/{orgId}/limits/{bucket}",
        body,
        idempotent: true,
      },
      options,
    );
  }

  /**
   * `DELETE /v1/admin/orgs/{orgId}/limits/{bucket}`: the org's override for every environment,
   * for one (`environment`), or one key's (`keyId`); the next one down applies again.
   */
  async clear(
    orgId: string,
    bucket: string,
    options?: { keyId?: string; environment?: Environment } & RequestOptions,
  ): Promise<void> {
    await this.a.call(
      {
        method: "DELETE",
        path: `${ADMIN}/orgs/${seg(orgId, "orgId")}/limits/${seg(bucket, "bucket")}`,
        route: "DELETE /v1/admin/orgs/{orgId}/limits/{bucket}",
        query: { keyId: options?.keyId, environment: options?.environment },
        idempotent: true,
      },
      options,
    );
  }
}

/** `admin.audit`: every change, who made it, when and from where. */
export class AuditAdmin {
  constructor(private readonly a: AdminClient) {}

  private listOp(params: (PageOptions & { org?: string; action?: AuditEntry["action"] }) | undefined, cursor?: string): Operation {
    return {
      method: "GET",
      path: `${ADMIN}/audit`,
      route: "GET /v1/admin/audit",
      query: { ...paging(params, cursor), org: params?.org, action: params?.action },
      idempotent: true,
    };
  }

  /** `GET /v1/admin/audit`: one page, newest first, filtered by org and action. */
  list(params?: PageOptions & { org?: string; action?: AuditEntry["action"] }): Promise<AuditPage> {
    return this.a.call(this.listOp(params), params);
  }

  /** Every page of the audit log, following `nextCursor`. */
  iter(params?: Omit<PageOptions, "cursor"> & { org?: string; action?: AuditEntry["action"] }): AsyncGenerator<AuditPage> {
    return this.a.pages((cursor) => this.listOp(params, cursor), params);
  }
}

/** The environment an `admin.webhooks` call works in (required: an org's webhooks are kept per environment). */
export interface EnvironmentOptions extends RequestOptions {
  environment: Environment;
}

function eventTypes(value: readonly string[] | null): string[] | null {
  return value === null ? null : [...value];
}

/**
 * `admin.webhooks`: an org's webhook endpoints and deliveries. Every call names the org
 * and the environment (`SANDBOX` or `PRODUCTION`); an id of another org or of the other
 * environment is a {@link NotFoundError}, like an unknown one.
 */
export class WebhooksAdmin {
  readonly endpoints: WebhookEndpointsAdmin;
  readonly deliveries: WebhookDeliveriesAdmin;

  constructor(a: AdminClient) {
    this.endpoints = new WebhookEndpointsAdmin(a);
    this.deliveries = new WebhookDeliveriesAdmin(a);
  }
}

const ENDPOINT = "/v1/admin/orgs/{orgId}/webhooks/endpoints/{endpointId}";

/** `admin.webhooks.endpoints`: where an org's events are sent. */
export class WebhookEndpointsAdmin {
  constructor(private readonly a: AdminClient) {}

  private path(orgId: string, endpointId?: string, action = ""): string {
    const all = `${ADMIN}/orgs/${seg(orgId, "orgId")}/webhooks/endpoints`;
    return endpointId === undefined ? all : `${all}/${seg(endpointId, "endpointId")}${action}`;
  }

  /** `GET /v1/admin/orgs/{orgId}/webhooks/endpoints`: the org's endpoints in `environment`, oldest first (never a secret). */
  async list(orgId: string, params: EnvironmentOptions): Promise<AdminWebhookEndpoint[]> {
    const body = await this.a.call<{ data: AdminWebhookEndpoint[] }>(
      {
        method: "GET",
        path: this.path(orgId),
        route: "GET /v1/admin/orgs/{orgId}/webhooks/endpoints",
        query: { environment: params.environment },
        idempotent: true,
      },
      params,
    );
    return body.data;
  }

  /**
   * `POST /v1/admin/orgs/{orgId}/webhooks/endpoints`: a new endpoint with its `whsec_`
   * `secret` this once. The URL passes the server's SSRF guard or is a {@link BadRequestError}.
   */
  create(
    orgId: string,
    params: { url: string; eventTypes?: readonly string[] | null } & EnvironmentOptions,
  ): Promise<AdminWebhookEndpointCreated> {
    const body: Record<string, unknown> = { url: params.url };
    if (params.eventTypes !== undefined) body.eventTypes = eventTypes(params.eventTypes);
    return this.a.call(
      {
        method: "POST",
        path: this.path(orgId),
        route: "POST /v1/admin/orgs/{orgId}/webhooks/endpoints",
        query: { environment: params.environment },
        body,
        idempotent: false, // each call registers one more endpoint
      },
      params,
    );
  }

  /** `PATCH …/endpoints/{endpointId}`: enable or disable it, or filter its event types (`null`: every type). */
  update(
    orgId: string,
    endpointId: string,
    changes: { enabled?: boolean; eventTypes?: readonly string[] | null } & EnvironmentOptions,
  ): Promise<AdminWebhookEndpoint> {
    const body: Record<string, unknown> = {};
    if (changes.enabled !== undefined) body.enabled = changes.enabled;
    if (changes.eventTypes !== undefined) body.eventTypes = eventTypes(changes.eventTypes);
    return this.a.call(
      {
        method: "PATCH",
        path: this.path(orgId, endpointId),
        route: `PATCH ${ENDPOINT}`,
        query: { environment: changes.environment },
        body,
        idempotent: true,
      },
      changes,
    );
  }

  /** `DELETE …/endpoints/{endpointId}`: remove it (its pending deliveries end); the endpoint as it was. */
  delete(orgId: string, endpointId: string, params: EnvironmentOptions): Promise<AdminWebhookEndpoint> {
    return this.a.call(
      {
        method: "DELETE",
        path: this.path(orgId, endpointId),
        route: `DELETE ${ENDPOINT}`,
        query: { environment: params.environment },
        idempotent: true,
      },
      params,
    );
  }

  /**
   * `POST …/endpoints/{endpointId}/rotate-secret`: a new `secret` (this once); the old one
   * signs too for `overlapSeconds` (the server's default, 1 day, when omitted).
   */
  rotateSecret(
    orgId: string,
    endpointId: string,
    params: { overlapSeconds?: number } & EnvironmentOptions,
  ): Promise<AdminWebhookEndpointCreated> {
    return this.a.call(
      {
        method: "POST",
        path: this.path(orgId, endpointId, "/rotate-secret"),
        route: `POST ${ENDPOINT}/rotate-secret`,
        query: { environment: params.environment },
        body: params.overlapSeconds === undefined ? {} : { overlapSeconds: params.overlapSeconds },
        idempotent: false, // each call makes another secret
      },
      params,
    );
  }

  /** `POST …/endpoints/{endpointId}/test`: send a signed `ping`; its delivery after the first attempt. */
  test(orgId: string, endpointId: string, params: EnvironmentOptions): Promise<WebhookDelivery> {
    return this.a.call(
      {
        method: "POST",
        path: this.path(orgId, endpointId, "/test"),
        route: `POST ${ENDPOINT}/test`,
        query: { environment: params.environment },
        idempotent: false, // each call sends another ping
      },
      params,
    );
  }
}

/** `admin.webhooks.deliveries`: an org's deliveries and their replay. */
export class WebhookDeliveriesAdmin {
  constructor(private readonly a: AdminClient) {}

  /**
   * `GET /v1/admin/orgs/{orgId}/webhooks/deliveries`: the org's deliveries in `environment`
   * (of one job with `jobId`), newest first (the latest 100), with their attempts.
   */
  async list(orgId: string, params: { jobId?: string } & EnvironmentOptions): Promise<WebhookDelivery[]> {
    const body = await this.a.call<{ data: WebhookDelivery[] }>(
      {
        method: "GET",
        path: `${ADMIN}/orgs/${seg(orgId, "orgId")}/webhooks/deliveries`,
        route: "GET /v1/admin/orgs/{orgId}/webhooks/deliveries",
        query: { environment: params.environment, jobId: params.jobId },
        idempotent: true,
      },
      params,
    );
    return body.data;
  }

  /**
   * `POST …/deliveries/{deliveryId}/replay`: the same event (same `webhook-id` and body)
   * again, as a new delivery; that delivery after its first attempt.
   */
  replay(orgId: string, deliveryId: string, params: EnvironmentOptions): Promise<WebhookDelivery> {
    return this.a.call(
      {
        method: "POST",
        path: `${ADMIN}/orgs/${seg(orgId, "orgId")}/webhooks/deliveries/${seg(deliveryId, "deliveryId")}/replay`,
        route: "POST /v1/admin/orgs/{orgId}/webhooks/deliveries/{deliveryId}/replay",
        query: { environment: params.environment },
        idempotent: false, // each replay is another delivery
      },
      params,
    );
  }
}
