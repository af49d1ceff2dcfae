"""Every key one script call touches lies in one Redis Cluster slot: computed for every
key shape of :mod:`tollhouse.limits.naming`, for the checks the gateway builds per request
and for the status endpoint's read. A shape that would be ``CROSSSLOT`` fails here,
never at run time."""

from __future__ import annotations

import inspect

import pytest
from redis.crc import key_slot

from tollhouse.http.checks import CheckCache, bucket_check, keyless_checks, pool_check
from tollhouse.keys.model import Identity
from tollhouse.limits import naming
from tollhouse.limits.redis import HOLD_SUFFIX, PROBE_KEY
from tollhouse.limits.store import BucketCheck, PoolCheck
from tollhouse.policy.load import parse_policy
from tollhouse.policy.match import Router
from tollhouse.policy.model import Bucket, Pool

SCOPES = ("org", "key", "tenant", "ip")

POLICY = """
[[buckets]]
name = "per_org"
limit = 10
window = "1m"
routes = ["POST /v1/things*"]

[[buckets]]
name = "per_key"
limit = 10
window = "1m"
scope = "key"
algorithm = "gcra"
routes = ["POST /v1/things*"]

[[buckets]]
name = "per_tenant"
limit = 10
window = "1m"
scope = "tenant"
routes = ["POST /v1/things*"]

[[buckets]]
name = "per_address"
limit = 10
window = "1m"
scope = "ip"
routes = ["POST /v1/things*"]

[[buckets]]
name = "trial"
limit = 1
window = "1m"
shadow = true
routes = ["POST /v1/things*"]

[[pools]]
name = "inflight"
limit = 2
routes = ["POST /v1/things*"]
"""

IDENTITIES = [
    Identity("key_1", "acme", "SANDBOX", "root", "t1"),
    Identity("key_2", "acme", "PRODUCTION", "member", None),
    # Braces elsewhere in a key never move its hash tag: the first {…} names the slot.
    Identity("key_{3}", "org-with:colon", "SANDBOX", "root", "{tenant}"),
]
ADDRESSES = ["203.0.113.9", "2001:db8::1", None]


def _keys(buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...]) -> list[str]:
    """The KEYS of one decide/peek script call (a pool brings its hold-time key)."""
    keys = [c.key for c in buckets]
    for p in pools:
        keys += [p.key, p.key + HOLD_SUFFIX]
    return keys


def _one_slot(keys: list[str]) -> int:
    slots = {key_slot(k.encode()) for k in keys}
    assert len(slots) == 1, f"keys in {len(slots)} slots: {keys}"
    return slots.pop()


def test_every_shape_of_naming_is_covered_here() -> None:
    """A key function added to naming.py must be added to the tests below."""
    functions = {
        name
        for name, f in vars(naming).items()
        if inspect.isfunction(f) and f.__module__ == naming.__name__
    }
    assert functions == {"bucket_key", "ip_bucket_key", "failed_auth_key", "pool_key"}


@pytest.mark.parametrize("identity", IDENTITIES)
@pytest.mark.parametrize("address", ADDRESSES)
def test_a_callers_keys_of_every_scope_share_its_org_slot(
    identity: Identity, address: str | None
) -> None:
    keys = [
        naming.bucket_key(Bucket(f"b_{s}", "B", 5, 60.0, (), (), s), identity, address)  # type: ignore[arg-type]
        for s in SCOPES
    ]
    pool = naming.pool_key(Pool("p", 2, ()), identity)
    slot = _one_slot([*keys, pool, pool + HOLD_SUFFIX])
    assert slot == key_slot(f"{{{identity.org_scope}}}".encode())
    # Different orgs and environments land where their own tag says.
    other = Identity("key_9", identity.org + "x", identity.environment, "root")
    assert naming.pool_key(Pool("p", 2, ()), other) != pool


@pytest.mark.parametrize("address", ADDRESSES)
def test_keyless_keys_share_the_address_slot(address: str | None) -> None:
    """A request without a key counts its ``ip`` buckets; a failed authentication its
    own counter (a call of its own): each one slot, the address's."""
    buckets = [Bucket(f"open_{i}", "O", 5, 60.0, (), (), "ip") for i in range(3)]
    keys = [naming.ip_bucket_key(b, address) for b in buckets]
    slot = _one_slot(keys)
    assert slot == key_slot(f"{{ip:{address or '-'}}}".encode())
    assert _one_slot([naming.failed_auth_key(address)]) == slot


@pytest.mark.parametrize("identity", IDENTITIES)
def test_the_gateways_checks_and_the_status_read_are_one_slot(identity: Identity) -> None:
    """What the gateway actually sends: the checks of a route carrying every scope, a
    shadow bucket and a pool; and the status endpoint's read of every bucket and pool."""
    policy = parse_policy(POLICY, "test")
    match = Router(policy).match("POST", "/v1/things/1")
    assert {b.scope for b in match.buckets} == set(SCOPES) and match.pools
    scope = {"type": "http", "client": ("198.51.100.7", 4000)}
    checks = CheckCache().get(match, identity, scope, lambda b, _: b.limit)
    slot = _one_slot(_keys(checks.buckets, checks.pools))
    assert _one_slot(_keys(checks.shadow, ())) == slot  # counted in its own call
    status = (
        tuple(bucket_check(b, identity, "198.51.100.7", b.limit) for b in policy.buckets),
        tuple(pool_check(p, identity, p.limit) for p in policy.pools),
    )
    assert _one_slot(_keys(*status)) == slot
    keyless = keyless_checks(match, "198.51.100.7")
    assert len(keyless.buckets) == 1
    _one_slot(_keys(keyless.buckets, ()))


def test_the_probe_has_a_slot_of_its_own() -> None:
    _one_slot([PROBE_KEY])
