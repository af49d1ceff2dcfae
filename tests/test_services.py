"""The test services themselves start and answer (so a broken install fails loudly)."""

from __future__ import annotations

import socket
import ssl

from tests.services import PostgresServer, RedisServer


def test_redis_answers(redis_service: RedisServer) -> None:
    with socket.create_connection(("127.0.0.1", redis_service.port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(64).startswith(b"+PONG")


def test_tls_redis_answers_over_verified_tls_only(redis_tls_service: RedisServer) -> None:
    assert redis_tls_service.tls is not None
    context = ssl.create_default_context(cafile=str(redis_tls_service.tls.ca))
    address = ("127.0.0.1", redis_tls_service.port)
    with (
        socket.create_connection(address, timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        s.sendall(b"PING\r\n")
        assert s.recv(64).startswith(b"+PONG")
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(b"PING\r\n")
        try:
            answer = s.recv(64)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"+PONG")  # no plain text on the TLS port


def test_postgres_answers(postgres_service: PostgresServer) -> None:
    url = postgres_service.create_database("smoke")
    assert url.endswith("/smoke")
