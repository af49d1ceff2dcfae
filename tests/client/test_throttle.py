"""Proactive throttling from the rate-limit headers: plain state, the time passed in."""

from __future__ import annotations

from tollhouse.client._throttle import PROBE_WAIT, Throttle, parse_structured

ROUTE = "GET /v1/rate-limit/status"
T0 = 1_800_000_000.0  # a window boundary (epoch-aligned 1 s windows)


def headers(remaining: int, reset: int, t: int, limit: int = 2, w: int = 1) -> dict[str, str]:
    return {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(reset),
        "ratelimit-policy": f'"rate_limit_status";q={limit};w={w}, "other";q=100;w=60',
        "ratelimit": f'"rate_limit_status";r={remaining};t={t}, "other";r=90;t=40',
    }


def test_parse_structured_fields() -> None:
    parsed = parse_structured('"a";r=1;t=2, "b";q=5;w=60')
    assert parsed == {"a": {"r": "1", "t": "2"}, "b": {"q": "5", "w": "60"}}
    assert parse_structured(None) == {}


def test_unknown_route_probes_with_one_request() -> None:
    th = Throttle()
    assert th.acquire(ROUTE, T0) == 0  # the first goes ...
    assert th.acquire(ROUTE, T0) == PROBE_WAIT  # ... the others wait for its answer
    th.observe(ROUTE, 200, headers(1, int(T0) + 1, 1), T0 + 0.01)
    assert th.acquire(ROUTE, T0 + 0.02) == 0  # the one left


def test_a_lost_probe_does_not_block_forever() -> None:
    th = Throttle()
    assert th.acquire(ROUTE, T0) == 0
    th.failed(ROUTE)
    assert th.acquire(ROUTE, T0) == 0
    assert th.acquire(ROUTE, T0 + 30) == 0  # the probe's attempt timed out: go


def test_routes_without_limits_are_never_held() -> None:
    th = Throttle()
    th.acquire("GET /healthz", T0)
    th.observe("GET /healthz", 200, {}, T0)
    assert [th.acquire("GET /healthz", T0) for _ in range(5)] == [0] * 5


def test_remaining_zero_waits_until_reset_then_rolls_over() -> None:
    th = Throttle()
    now = T0 + 0.3
    th.observe(ROUTE, 200, headers(0, int(T0) + 1, 1), now)
    wait = th.acquire(ROUTE, now)
    assert abs(wait - 0.7) < 1e-6
    # After the reset: a fresh window of `limit` (the policy says w=1), then wait again.
    later = T0 + 1.05
    assert th.acquire(ROUTE, later) == 0
    assert th.acquire(ROUTE, later) == 0
    assert abs(th.acquire(ROUTE, later) - 0.95) < 1e-6


def test_reservations_count_down_between_answers() -> None:
    th = Throttle()
    th.observe(ROUTE, 200, headers(3, int(T0) + 1, 1, limit=5), T0)
    assert [th.acquire(ROUTE, T0) for _ in range(3)] == [0, 0, 0]
    assert th.acquire(ROUTE, T0) > 0
    # A late answer from before the reservations does not give them back.
    th.observe(ROUTE, 200, headers(2, int(T0) + 1, 1, limit=5), T0 + 0.1)
    assert th.acquire(ROUTE, T0 + 0.1) > 0


def test_429_answers_teach_the_window_too() -> None:
    th = Throttle()
    th.observe(ROUTE, 429, headers(0, int(T0) + 1, 1), T0 + 0.5)
    assert 0.49 < th.acquire(ROUTE, T0 + 0.5) <= 0.5


def test_a_skewed_server_clock_cannot_stretch_the_wait() -> None:
    th = Throttle()
    # The server's clock is an hour ahead: its absolute reset is far off, but the
    # relative t=1 bounds the wait to a second of ours.
    th.observe(ROUTE, 200, headers(0, int(T0) + 3601, 1), T0)
    assert th.acquire(ROUTE, T0) <= 1.0
    # An hour behind: at least t - 1 = 0 s, not negative.
    th2 = Throttle()
    th2.observe(ROUTE, 200, headers(0, int(T0) - 3599, 1), T0)
    assert th2.acquire(ROUTE, T0) >= 0


def test_without_relative_reset_a_far_absolute_one_is_distrusted() -> None:
    th = Throttle()
    bare = {
        "x-ratelimit-limit": "2",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "9999999999",
    }
    th.observe(ROUTE, 200, bare, T0)
    assert th.acquire(ROUTE, T0) <= 1.0


def test_routes_are_independent() -> None:
    th = Throttle()
    th.observe(ROUTE, 200, headers(0, int(T0) + 1, 1), T0)
    assert th.acquire(ROUTE, T0) > 0
    assert th.acquire("GET /v1/score/{scoringJobId}", T0) == 0
    th.forget()
    assert th.acquire(ROUTE, T0) == 0


def test_routes_sharing_a_bucket_see_each_others_use() -> None:
    """Submissions and status reads both count against "scoring": a read that used the
    last request of the window holds the next submission too."""

    def answer(bucket_left: int, other: str) -> dict[str, str]:
        return {
            "x-ratelimit-limit": "3",
            "x-ratelimit-remaining": str(bucket_left),
            "x-ratelimit-reset": str(int(T0) + 60),
            "ratelimit-policy": f'"scoring";q=3;w=60, "{other}";q=50;w=1',
            "ratelimit": f'"scoring";r={bucket_left};t=60, "{other}";r=40;t=1',
        }

    th = Throttle()
    submit, read = "POST /v1/score/batch", "GET /v1/score"
    th.observe(submit, 202, answer(2, "intake"), T0)
    th.observe(read, 200, answer(1, "reads"), T0 + 0.1)
    assert th.acquire(read, T0 + 0.2) == 0  # the last one
    wait = th.acquire(submit, T0 + 0.2)
    assert 59 < wait <= 60  # "scoring" is used up, whichever route used it


def test_a_429_naming_one_bucket_keeps_the_routes_other_buckets() -> None:
    th = Throttle()
    th.observe(ROUTE, 200, headers(1, int(T0) + 1, 1), T0)
    denied = {
        "x-ratelimit-limit": "100",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(int(T0) + 40),
        "ratelimit-policy": '"other";q=100;w=60',
        "ratelimit": '"other";r=0;t=40',
    }
    th.observe(ROUTE, 429, denied, T0 + 0.1)
    assert 39 < th.acquire(ROUTE, T0 + 0.2) <= 40
    assert th.acquire(ROUTE, T0 + 41) == 0  # both windows rolled over


def test_a_rollover_counts_the_requests_still_in_flight() -> None:
    """Two requests sent just before the boundary may be decided after it, in the new
    window: until their answers come, only ``limit - in_flight`` more may go."""
    th = Throttle()
    th.acquire(ROUTE, T0 - 1)  # the probe
    th.observe(ROUTE, 200, headers(1, int(T0), 1), T0 - 0.9)  # window ends at T0, 1 left
    assert th.acquire(ROUTE, T0 - 0.9) == 0  # one request out at the boundary
    assert th.acquire(ROUTE, T0 - 0.01) > 0  # the window is used up
    assert th.acquire(ROUTE, T0 + 0.01) == 0  # new window: limit 2 - 1 in flight
    assert th.acquire(ROUTE, T0 + 0.01) > 0
    # Its answer: it counted in the new window, which has one left ... for the one
    # reserved since, so none.
    th.observe(ROUTE, 200, headers(1, int(T0) + 1, 1), T0 + 0.02)
    assert th.acquire(ROUTE, T0 + 0.03) > 0


def test_two_in_flight_at_the_boundary_hold_the_whole_new_window() -> None:
    th = Throttle()
    th.observe(ROUTE, 200, headers(2, int(T0), 1), T0 - 0.5)
    assert [th.acquire(ROUTE, T0 - 0.01) for _ in range(2)] == [0, 0]  # both out
    assert th.acquire(ROUTE, T0 + 0.01) > 0  # limit 2 - 2 in flight: none may go
    # One answer, decided before the boundary: an earlier window, no news.
    th.observe(ROUTE, 200, headers(0, int(T0), 1), T0 + 0.02)
    assert th.acquire(ROUTE, T0 + 0.03) > 0
    # The other, decided after it: the lower count stands for the rest of this window
    # (it was counted in both) ...
    th.observe(ROUTE, 200, headers(1, int(T0) + 1, 1), T0 + 0.04)
    assert th.acquire(ROUTE, T0 + 0.05) > 0
    # ... and the next window, with nothing out, is whole.
    assert [th.acquire(ROUTE, T0 + 1.01) for _ in range(2)] == [0, 0]
    assert th.acquire(ROUTE, T0 + 1.01) > 0


def test_a_new_window_learned_from_an_answer_counts_the_others_in_flight() -> None:
    th = Throttle()
    th.observe(ROUTE, 200, headers(2, int(T0), 1), T0 - 0.5)
    assert [th.acquire(ROUTE, T0 - 0.01) for _ in range(2)] == [0, 0]
    # The first answer is already from the next window (one left), the other still out.
    th.observe(ROUTE, 200, headers(1, int(T0) + 1, 1), T0 + 0.01)
    assert th.acquire(ROUTE, T0 + 0.02) > 0


def test_a_slow_first_answer_keeps_the_others_waiting() -> None:
    """The first request on a route is slower than 2 s but within the timeout: the
    others still wait for it rather than burst into an unknown window."""
    th = Throttle(probe_timeout=30.0)
    assert th.acquire(ROUTE, T0) == 0
    assert th.acquire(ROUTE, T0 + 2.5) == PROBE_WAIT
    assert th.acquire(ROUTE, T0 + 29.9) == PROBE_WAIT
    th.observe(ROUTE, 200, headers(1, int(T0) + 31, 31, w=60), T0 + 29.95)
    assert th.acquire(ROUTE, T0 + 29.96) == 0
    # Past the timeout with no word at all (a lost answer), they go.
    th2 = Throttle(probe_timeout=5.0)
    assert th2.acquire(ROUTE, T0) == 0
    assert th2.acquire(ROUTE, T0 + 4.9) == PROBE_WAIT
    assert th2.acquire(ROUTE, T0 + 5.0) == 0


def test_the_default_probe_timeout_outlasts_a_slow_first_answer() -> None:
    th = Throttle()
    assert th.acquire(ROUTE, T0) == 0
    assert th.acquire(ROUTE, T0 + 2.5) == PROBE_WAIT


def test_a_failed_request_frees_its_in_flight_count() -> None:
    th = Throttle()
    th.observe(ROUTE, 200, headers(2, int(T0), 1), T0 - 0.5)
    assert [th.acquire(ROUTE, T0 - 0.01) for _ in range(2)] == [0, 0]
    th.failed(ROUTE)  # one got no answer (it may still have counted: the other has not)
    assert th.acquire(ROUTE, T0 + 0.01) == 0  # limit 2 - 1 in flight
    assert th.acquire(ROUTE, T0 + 0.01) > 0
    th.failed(ROUTE)
    th.failed(ROUTE)
    th.failed(ROUTE)  # more than were out: nothing goes below zero
    assert [th.acquire(ROUTE, T0 + 1.01) for _ in range(2)] == [0, 0]
    assert th.acquire(ROUTE, T0 + 1.01) > 0


def test_in_flight_requests_count_in_every_bucket_of_their_route() -> None:
    """A status read in flight at a rollover of the shared bucket holds a submission."""

    def answer(left: int, reset: int) -> dict[str, str]:
        return {
            "x-ratelimit-limit": "2",
            "x-ratelimit-remaining": str(left),
            "x-ratelimit-reset": str(reset),
            "ratelimit-policy": '"scoring";q=2;w=1',
            "ratelimit": f'"scoring";r={left};t=1',
        }

    th = Throttle()
    submit, read = "POST /v1/score/batch", "GET /v1/score"
    th.observe(submit, 202, answer(2, int(T0)), T0 - 0.5)
    th.observe(read, 200, answer(1, int(T0)), T0 - 0.4)
    assert th.acquire(read, T0 - 0.01) == 0  # out at the boundary
    assert th.acquire(submit, T0 + 0.01) == 0  # 2 - 1 in flight
    assert th.acquire(submit, T0 + 0.01) > 0
