"""The test services themselves start and answer (so a broken install fails loudly)."""

from __future__ import annotations

import socket

from tests.services import PostgresServer, RedisServer


def test_redis_answers(redis_service: RedisServer) -> None:
    with socket.create_connection(("127.0.0.1", redis_service.port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(64).startswith(b"+PONG")


def test_postgres_answers(postgres_service: PostgresServer) -> None:
    url = postgres_service.create_database("smoke")
    assert url.endswith("/smoke")
