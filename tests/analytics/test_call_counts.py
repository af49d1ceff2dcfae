"""The call-counts shape (docs/api-shapes.md) over HTTP on both engines: counts, bucket
edges, the fold, labels, paging, roles and every error."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.analytics.support import DAY, DAY0, iso, platform, record, who
from tests.storage.support import run_with, sqlite_url
from tollhouse.analytics.call_counts import decode_cursor, encode_cursor
from tollhouse.keys.store import KeyStore
from tollhouse.metering.meter import UsageMeter

NOW = DAY0 + 2 * DAY  # minute rollups (kept 7 days) still cover DAY0


def q(start: float, end: float, **extra: Any) -> dict[str, Any]:
    return {"start_timestamp": start, "end_timestamp": end, **extra}


def test_counts_equal_the_calls_recorded_with_inclusive_bucket_edges(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        # 7 calls at 00:00:00, 3 at 00:00:59.9, 5 at 00:01:00, 2 at 00:10:30, 4 a day later
        for t, n in ((DAY0, 7), (DAY0 + 59.9, 3), (DAY0 + 60, 5), (DAY0 + 630, 2)):
            for _ in range(n):
                record(meter, t)
        for _ in range(4):
            record(meter, DAY0 + DAY + 5)
        async with platform(engine, who(), meter=meter, now=NOW) as client:
            r = await client.get("/call-counts/historical/", params=q(DAY0, DAY0 + 3600))
            assert r.status_code == 200
            body = r.json()
            assert body == {
                "timestamps": [DAY0, DAY0 + 60.0, DAY0 + 600.0],
                "counts": [10, 5, 2],
                "warnings": [],
            }
            # A bucket overlapping the range counts whole: 00:10 when starting at 00:10:45.
            r = await client.get("/call-counts/historical", params=q(DAY0 + 645, DAY0 + 3600))
            assert r.json()["counts"] == [2]
            # The end is inclusive of the bucket starting at it.
            r = await client.get("/call-counts/historical/", params=q(DAY0 - 600, DAY0 + 60))
            assert r.json()["counts"] == [10, 5]
            r = await client.get("/call-counts/historical/", params=q(DAY0 - 600, DAY0 + 59))
            assert r.json()["counts"] == [10]
            # Two days: hourly buckets, every call counted once.
            r = await client.get("/call-counts/historical/", params=q(DAY0, DAY0 + 2 * DAY))
            assert r.json()["timestamps"] == [DAY0, DAY0 + DAY]
            assert r.json()["counts"] == [17, 4]
            # Default range: the 30 days before now.
            r = await client.get("/call-counts/historical/")
            assert sum(r.json()["counts"]) == 21

    run_with(database_url, go)


def test_more_than_100_points_fold_into_100_buckets(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        for i in range(150):  # 150 distinct minutes within a day → 150 native points
            for _ in range(1 + i % 3):
                record(meter, DAY0 + i * 240 + 1)
        total = sum(1 + i % 3 for i in range(150))
        async with platform(engine, who(), meter=meter, now=NOW) as client:
            start, end = DAY0, DAY0 + DAY
            body = (await client.get("/call-counts/historical/", params=q(start, end))).json()
            assert len(body["timestamps"]) == len(body["counts"]) == 100
            assert body["timestamps"][0] == start and body["timestamps"][1] == start + 864
            assert sum(body["counts"]) == total
            # Exactly 100 points are not folded.
            body = (
                await client.get("/call-counts/historical/", params=q(start, DAY0 + 99 * 240 + 1))
            ).json()
            assert len(body["counts"]) == 100
            assert body["timestamps"][:2] == [DAY0 + 0.0, DAY0 + 240.0]

    run_with(database_url, go)


def test_labels_and_their_sources(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        store = KeyStore(engine)
        key, _ = await store.create("acme", "test", "manager", "ci-robot")
        meter = UsageMeter(engine)
        record(meter, DAY0 + 10, key=key.id, labels={"db": "movies", "scenario": "home",
                                                      "reco_type": "ITEMS"})  # fmt: skip
        record(meter, DAY0 + 20, key=key.id, labels={"db": "movies", "scenario": "home",
                                                      "reco_type": "ITEMS"})  # fmt: skip
        record(meter, DAY0 + 30, key="key_gone", group="CRITERIA", route="/v1/criteria/x",
               labels={"db": "books", "scenario": "cart", "reco_type": "USERS"})  # fmt: skip
        record(meter, DAY0 + 40, group=None, route=None)
        events = [
            {"id": "c1", "type": "conversation_started", "time": iso(DAY0 + 5),
             "data": {"conversation_id": "a"}},
            {"id": "m1", "type": "message_sent", "time": iso(DAY0 + 6),
             "data": {"conversation_id": "a"}},
            {"id": "m2", "type": "message_sent", "time": iso(DAY0 + 7),
             "data": {"conversation_id": "b"}},
            {"id": "l1", "type": "llm_call", "time": iso(DAY0 + 8), "data": {"model": "x"}},
            {"id": "l2", "type": "llm_call", "time": iso(DAY0 + 9), "data": {"model": "y"}},
            {"id": "l3", "type": "llm_call", "time": iso(DAY0 + 99), "data": {"model": "y"}},
        ]  # fmt: skip
        async with platform(engine, who(), meter=meter, now=NOW) as client:
            assert (await client.post("/v1/events", json=events)).status_code == 200

            async def series(label: str) -> list[dict[str, Any]]:
                r = await client.get(
                    f"/call-counts/historical/{label}/", params=q(DAY0, DAY0 + 3600)
                )
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["has_next"] is False and body["next_cursor"] is None
                assert all(len(s["counts"]) == len(body["timestamps"]) for s in body["series"])
                return [{k: s[k] for k in ("key", "description", "extra_data")} | {
                    "total": sum(s["counts"])} for s in body["series"]]  # fmt: skip

            assert await series("ENDPOINTS") == [
                {"key": "CRITERIA", "description": "read and write criteria", "extra_data": {},
                 "total": 1},
                {"key": "OTHER", "description": "calls outside every endpoint group",
                 "extra_data": {}, "total": 1},
                {"key": "SCORING", "description": "submit and read scoring jobs",
                 "extra_data": {}, "total": 2},
            ]  # fmt: skip
            assert await series("ACCOUNTS") == sorted(
                [
                    {"key": "key_a", "description": "", "extra_data": {}, "total": 1},
                    {"key": "key_gone", "description": "", "extra_data": {}, "total": 1},
                    {"key": key.id, "description": "ci-robot", "extra_data": {}, "total": 2},
                ],
                key=lambda s: str(s["key"]),
            )
            assert await series("DBS") == [
                {"key": "books", "description": "calls on database books",
                 "extra_data": {"db_id": "books"}, "total": 1},
                {"key": "movies", "description": "calls on database movies",
                 "extra_data": {"db_id": "movies"}, "total": 2},
            ]  # fmt: skip
            assert [(s["key"], s["total"]) for s in await series("SCENARIOS")] == [
                ("ITEMS/home", 2),
                ("USERS/cart", 1),
            ]
            assert [(s["key"], s["total"]) for s in await series("RECO_TYPES")] == [
                ("ITEMS", 2),
                ("USERS", 1),
            ]
            chat = await series("CHAT")
            assert chat == [{"key": "acme", "description": "active chat sessions",
                             "extra_data": {}, "total": 2}]  # fmt: skip
            assert [(s["key"], s["total"]) for s in await series("LLM")] == [("acme", 3)]

            r = await client.get(
                "/call-counts/historical/SCENARIOS/ITEMS/home/", params=q(DAY0, DAY0 + 3600)
            )
            assert r.json() == {"timestamps": [DAY0], "counts": [2], "warnings": []}
            r = await client.get(
                "/call-counts/historical/SCENARIOS/USERS/home", params=q(DAY0, DAY0 + 3600)
            )
            assert r.json()["counts"] == []

    run_with(database_url, go)


def test_series_are_paged_by_cursor_with_shared_timestamps(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        for i in range(5):
            record(meter, DAY0 + i * 60, labels={"db": f"db{i}"})
        async with platform(engine, who(), meter=meter, now=NOW) as client:
            seen: list[str] = []
            cursor = None
            stamps = None
            while True:
                params = q(DAY0, DAY0 + 3600, amt=2)
                if cursor:
                    params["cursor"] = cursor
                body = (await client.get("/call-counts/historical/DBS/", params=params)).json()
                seen += [s["key"] for s in body["series"]]
                assert stamps is None or body["timestamps"] == stamps
                stamps = body["timestamps"]
                if not body["has_next"]:
                    assert body["next_cursor"] is None
                    break
                cursor = body["next_cursor"]
                assert isinstance(cursor, str)
            assert seen == [f"db{i}" for i in range(5)] and len(stamps or []) == 5
            body = (
                await client.get("/call-counts/historical/DBS/", params=q(DAY0, DAY0 + 3600))
            ).json()
            assert len(body["series"]) == 5 and body["has_next"] is False

    run_with(database_url, go)


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor("db/ü")) == "db/ü"
    assert decode_cursor(encode_cursor("")) == ""


@pytest.mark.parametrize("cursor", ["0_", "0_AAA", "7_____", "0_gICA"])
def test_every_cursor_of_the_rule_is_a_place(cursor: str) -> None:
    """A cursor tollhouse did not make still reads as a key: bytes that are not UTF-8
    become U+FFFD and NUL is dropped (no database text holds one)."""
    key = decode_cursor(cursor)
    assert "\x00" not in key


ROLES = [
    ("/call-counts/historical/", "root", 200),
    ("/call-counts/historical/", "manager", 200),
    ("/call-counts/historical/", "backend", 403),
    ("/call-counts/historical/", "member", 403),
    ("/call-counts/historical/DBS/", "manager", 200),
    ("/call-counts/historical/DBS/", "backend", 403),
    ("/call-counts/historical/SCENARIOS/ITEMS/home/", "backend", 200),
    ("/call-counts/historical/SCENARIOS/ITEMS/home/", "member", 403),
]


@pytest.mark.parametrize(("path", "role", "status"), ROLES)
def test_roles(tmp_path: Any, path: str, role: str, status: int) -> None:
    async def go(engine: AsyncEngine) -> None:
        async with platform(engine, who(role=role), now=NOW) as client:
            r = await client.get(path)
            assert r.status_code == status, r.text
            if status == 403:
                error = r.json()["error"]
                assert error["code"] == "FORBIDDEN" and error["status"] == 403
                assert error["type"] == "https://tollhouse.dev/errors/forbidden"
                assert error["requestId"] == "req_test" and role in error["message"]

    run_with(sqlite_url(tmp_path), go)


BAD = [
    ("/call-counts/historical/", {"start_timestamp": "-150000000000.1"}, 400, "start_timestamp"),
    ("/call-counts/historical/", {"end_timestamp": "3500000000.5"}, 400, "end_timestamp"),
    ("/call-counts/historical/", {"start_timestamp": "soon"}, 400, "start_timestamp"),
    ("/call-counts/historical/", {"start_timestamp": "nan"}, 400, "start_timestamp"),
    ("/call-counts/historical/DBS/", {"amt": "129"}, 400, "amt"),
    ("/call-counts/historical/DBS/", {"amt": "0"}, 400, "amt"),
    ("/call-counts/historical/DBS/", {"amt": "many"}, 400, "amt"),
    ("/call-counts/historical/DBS/", {"cursor": "garbage!"}, 400, "cursor"),
    ("/call-counts/historical/DBS/", {"cursor": ""}, 400, "cursor"),
    ("/call-counts/historical/PLANETS/", {}, 404, "PLANETS"),
]


@pytest.mark.parametrize(("path", "params", "status", "named"), BAD)
def test_errors(tmp_path: Any, path: str, params: dict[str, Any], status: int, named: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        async with platform(engine, who(), now=NOW) as client:
            r = await client.get(path, params=params)
            assert r.status_code == status, r.text
            error = r.json()["error"]
            assert error["status"] == status and named in error["message"]

    run_with(sqlite_url(tmp_path), go)


def test_extreme_but_valid_bounds_and_no_identity(tmp_path: Any) -> None:
    async def go(engine: AsyncEngine) -> None:
        async with platform(engine, who(), now=NOW) as client:
            r = await client.get(
                "/call-counts/historical/",
                params=q(-150000000000.0, 3500000000.0),
            )
            assert r.status_code == 200 and r.json()["counts"] == []
            r = await client.get("/call-counts/historical/LLM/", params=q(-1e11, 3.5e9))
            assert r.status_code == 200 and r.json()["series"] == []
            (warning,) = r.json()["warnings"]
            assert warning.startswith("data older than 400 days has been deleted")
        async with platform(engine, None, now=NOW) as anonymous:
            r = await anonymous.get("/call-counts/historical/")
            assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"

    run_with(sqlite_url(tmp_path), go)


def test_a_range_older_than_minute_retention_uses_hours_and_warns(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        record(meter, DAY0 + 90)
        record(meter, DAY0 + 200)
        async with platform(engine, who(), meter=meter, now=DAY0 + 30 * DAY) as client:
            body = (
                await client.get("/call-counts/historical/", params=q(DAY0, DAY0 + 3600))
            ).json()
            assert body["timestamps"] == [DAY0] and body["counts"] == [2]
            assert body["warnings"] == ["minute data is kept for 7 days: hourly buckets used."]

    run_with(database_url, go)
