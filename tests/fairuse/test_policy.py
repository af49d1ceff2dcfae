"""``[[fair_use]]`` tables: defaults, and errors that name the field."""

from __future__ import annotations

import pytest

from tollhouse.errors import PolicyError
from tollhouse.policy.load import load_policy, parse_policy
from tollhouse.policy.model import FAIR_USE_DEFAULTS, FAIR_USE_SIGNALS

BUCKET = """
[[buckets]]
name = "scoring"
limit = 10
window = "1m"
routes = ["POST /v1/score"]
"""


def test_built_in_policy_watches_every_signal_with_the_documented_defaults() -> None:
    rules = {r.signal: r for r in load_policy().fair_use}
    assert tuple(rules) == FAIR_USE_SIGNALS
    assert (rules["regeneration_loop"].threshold, rules["regeneration_loop"].window) == (3, 86400)
    assert rules["criteria_without_scoring"].after == 7 * 86400
    assert rules["polling_instead_of_webhooks"].threshold == 5
    assert rules["burst_submission"].window == 86400
    assert {r.action for r in rules.values()} == {"flag"}  # nothing throttles by default


def test_a_table_naming_only_the_signal_gets_its_defaults() -> None:
    [rule] = parse_policy('[[fair_use]]\nsignal = "polling_instead_of_webhooks"\n', "t").fair_use
    assert rule == FAIR_USE_DEFAULTS["polling_instead_of_webhooks"]


def test_throttle_names_a_bucket_and_a_limit() -> None:
    text = BUCKET + '[[fair_use]]\nsignal = "burst_submission"\naction = "throttle"\n'
    [rule] = parse_policy(text + 'bucket = "scoring"\nlimit = 2\n', "t").fair_use
    assert (rule.action, rule.bucket, rule.limit) == ("throttle", "scoring", 2)


def test_throttle_may_name_an_in_flight_pool() -> None:
    pool = '[[pools]]\nname = "generation_inflight"\nlimit = 4\nroutes = ["POST /v1/gen"]\n'
    text = BUCKET + pool + '[[fair_use]]\nsignal = "regeneration_loop"\naction = "throttle"\n'
    [rule] = parse_policy(text + 'bucket = "generation_inflight"\nlimit = 1\n', "t").fair_use
    assert (rule.bucket, rule.limit) == ("generation_inflight", 1)


@pytest.mark.parametrize(
    ("table", "where", "says"),
    [
        ('signal = "regen_loop"', "fair_use[0].signal", "is not a signal"),
        ('signal = "regeneration_loop"\nthreshold = -1', "fair_use[0].threshold", "0 or more"),
        ('signal = "burst_submission"\nthreshold = "high"', "fair_use[0].threshold", "must be"),
        ('signal = "burst_submission"\nwindow = "fortnight"', "fair_use[0].window", "duration"),
        ('signal = "burst_submission"\naction = "block"', "fair_use[0].action", "flag or throttle"),
        ('signal = "burst_submission"\nafter = "7d"', "fair_use[0].after", "only"),
        ('signal = "burst_submission"\nlimits = 3', "fair_use[0].limits", "unknown field"),
        ("threshold = 3", "fair_use[0].signal", "is required"),
        (
            'signal = "burst_submission"\naction = "throttle"\nbucket = "nope"\nlimit = 1',
            "fair_use[0].bucket",
            "not a bucket or a pool",
        ),
        (
            'signal = "regeneration_loop"\nroutes = ["POST /v1/criteria/{jobId}"]',
            "fair_use[0].routes[0]",
            "literal",
        ),
    ],
)
def test_bad_tables_name_the_field(table: str, where: str, says: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(BUCKET + "[[fair_use]]\n" + table + "\n", "t.toml")
    assert f"t.toml: {where}: " in str(info.value)
    assert says in str(info.value)


def test_a_signal_listed_twice_is_an_error() -> None:
    text = '[[fair_use]]\nsignal = "burst_submission"\n' * 2
    with pytest.raises(PolicyError, match=r"fair_use\[1\]\.signal: .*twice"):
        parse_policy(text, "t")
