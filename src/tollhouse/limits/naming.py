"""Counter keys for buckets and pools: every key prefix lives here.

Every key of one decision shares one Redis Cluster hash tag, so one script can touch
every counter a request hits on a cluster too (``tests/limits/cluster/test_slots.py``
checks every shape): a caller's keys carry ``{ORG:ENV}`` — its ``ip``-scoped buckets
included, counted per client address within the org and environment — and the keys of a
request answered without a key (``ip``-scoped buckets only) and the failed-authentication
counter carry ``{ip:ADDRESS}``. The limit is never part of a key: a changed limit applies
to the running window at once.
"""

from __future__ import annotations

from tollhouse.keys.model import Identity
from tollhouse.policy.model import Bucket, Pool


def bucket_key(bucket: Bucket, identity: Identity, client_ip: str | None) -> str:
    """The counter key of ``bucket`` for this caller, by the bucket's scope.

    An ``ip``-scoped bucket of a caller with a key counts per client address within the
    caller's org and environment: its key carries the org's hash tag like the others, so
    a decision over it and the org's buckets is one script on one Cluster slot.
    """
    scope = bucket.scope
    if scope == "org":
        return f"{{{identity.org_scope}}}:b:{bucket.name}"
    if scope == "key":
        return f"{{{identity.org_scope}}}:b:{bucket.name}:k:{identity.key_id}"
    if scope == "tenant":
        return f"{{{identity.org_scope}}}:b:{bucket.name}:t:{identity.tenant or '-'}"
    return f"{{{identity.org_scope}}}:b:{bucket.name}:i:{client_ip or '-'}"


def ip_bucket_key(bucket: Bucket, client_ip: str | None) -> str:
    """The counter key of an ``ip``-scoped bucket for one client address on a request
    answered without a key (no org to name)."""
    return f"{{ip:{client_ip or '-'}}}:b:{bucket.name}"


def failed_auth_key(client_ip: str | None) -> str:
    """The counter of failed authentications from one client address (``[limits]
    failed_auth``); apart from every bucket's key."""
    return f"{{ip:{client_ip or '-'}}}:a:failed"


def pool_key(pool: Pool, identity: Identity) -> str:
    """The slot set of ``pool`` for this caller's org and environment."""
    return f"{{{identity.org_scope}}}:p:{pool.name}"
