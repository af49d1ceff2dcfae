"""Real `redis-server` and PostgreSQL for the tests, started on loopback per session.

Redis also runs over TLS only (``--port 0 --tls-port …``), one server or a cluster, with a
throwaway CA made by the ``openssl`` command at start: the server's certificate names
127.0.0.1 and localhost, the client is given the CA, no client certificate is asked for
(what managed Redis services do).

`scripts/test` installs both with apt-get when missing. Here a missing binary skips the
tests that need it on a developer's machine, and fails them under ``CI=true``: in CI a
missing service is a failure, never a skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing(what: str, hint: str) -> None:
    """Skip locally, fail in CI."""
    message = f"{what} is not installed ({hint}); scripts/test installs it"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


_CA_CONFIG = """\
[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
CN = {name}
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
_SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and the server certificate it signed (for 127.0.0.1 and localhost)."""

    ca: Path
    cert: Path
    key: Path

    def server_args(self) -> list[str]:
        """`redis-server` options: TLS only, no client certificate asked for."""
        return [
            "--tls-cert-file",
            str(self.cert),
            "--tls-key-file",
            str(self.key),
            "--tls-ca-cert-file",
            str(self.ca),
            "--tls-auth-clients",
            "no",
        ]

    def client_options(self) -> dict[str, Any]:
        """redis-py keyword arguments of a client that trusts the CA."""
        return {"ssl": True, "ssl_ca_certs": str(self.ca)}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str = "tollhouse test CA") -> Path:
    """A self-signed CA in ``folder`` (``ca.pem``, its key ``ca.key``); returns ca.pem."""
    if shutil.which("openssl") is None:
        missing("openssl", "apt-get install openssl")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.cnf").write_text(_CA_CONFIG.format(name=name))
    _openssl(
        *("req", "-x509", "-config", "ca.cnf", "-days", "2", "-nodes"),
        *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-keyout", "ca.key", "-out", "ca.pem"),
        cwd=folder,
    )
    return folder / "ca.pem"


def make_tls_files(folder: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 and localhost signed by it."""
    ca = make_ca(folder)
    (folder / "server.ext").write_text(_SERVER_EXTENSIONS)
    _openssl(
        *("req", "-new", "-nodes", "-subj", "/CN=localhost"),
        *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-keyout", "server.key", "-out", "server.csr"),
        cwd=folder,
    )
    _openssl(
        *("x509", "-req", "-in", "server.csr", "-CA", ca.name, "-CAkey", "ca.key"),
        *("-set_serial", "1", "-days", "2", "-extfile", "server.ext", "-out", "server.pem"),
        cwd=folder,
    )
    return TlsFiles(ca, folder / "server.pem", folder / "server.key")


class RedisServer:
    """One `redis-server` process on a loopback port; can be killed and restarted. With
    ``tls``, it speaks TLS only."""

    def __init__(self, binary: str, workdir: Path, tls: TlsFiles | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.tls = tls
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.tls is not None:
            ports = ["--port", "0", "--tls-port", str(self.port), *self.tls.server_args()]
        else:
            ports = ["--port", str(self.port)]
        self.proc = subprocess.Popen(
            [
                self.binary,
                *ports,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, self.proc)

    def kill(self) -> None:
        """SIGKILL: Redis vanishes without a word, as in a crash."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@contextmanager
def redis_server(*, tls: bool = False) -> Iterator[RedisServer]:
    """A `redis-server` on loopback; with ``tls``, TLS only, its CA in ``server.tls``."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server", "apt-get install redis-server")
        raise AssertionError("unreachable")
    with tempfile.TemporaryDirectory() as tmp:
        files = make_tls_files(Path(tmp) / "tls") if tls else None
        server = RedisServer(binary, Path(tmp), files)
        server.start()
        try:
            yield server
        finally:
            server.kill()


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    """A throwaway PostgreSQL cluster on a loopback port.

    PostgreSQL refuses to run as root, so when the tests run as root the cluster is
    created and started as the ``postgres`` user with ``runuser``.
    """

    def __init__(self, bindir: Path, datadir: Path) -> None:
        self.bindir = bindir
        self.datadir = datadir
        self.port = free_port()

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.datadir / "server.log"),
            "-w",
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        """A fresh database; returns its URL."""
        self._run(
            str(self.bindir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-c",
            f'CREATE DATABASE "{name}"',
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _pg_bindir()
    if bindir is None:
        missing("PostgreSQL", "apt-get install postgresql")
        raise AssertionError("unreachable")
    tmp = Path(tempfile.mkdtemp(prefix="tollhouse-pg-"))
    datadir = tmp / "data"
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    server = PostgresServer(bindir, datadir)
    server.init()
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop("immediate")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def free_cluster_port() -> int:
    """A loopback port whose Cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterNodes:
    """Six `redis-server --cluster-enabled yes` on loopback made one Redis Cluster by
    `redis-cli --cluster create … --cluster-replicas 1`: three masters, a replica each.
    Nodes can be SIGKILLed (a replica then takes over) and asked about the slot map.
    With ``tls``, every node speaks TLS only, to clients, to each other (the cluster bus)
    and to its replicas."""

    NODES = 6

    def __init__(self, binary: str, cli: str, workdir: Path, tls: TlsFiles | None = None) -> None:
        self.binary = binary
        self.cli = cli
        self.workdir = workdir
        self.tls = tls
        self.ports = [free_cluster_port() for _ in range(self.NODES)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """``redis+cluster://`` (``rediss+cluster://…?ssl_ca_certs=`` with TLS) with every
        node as a startup node."""
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        if self.tls is not None:
            return f"rediss+cluster://{nodes}?ssl_ca_certs={self.tls.ca}"
        return f"redis+cluster://{nodes}"

    def start_node(self, port: int) -> None:
        node_dir = self.workdir / str(port)
        node_dir.mkdir(exist_ok=True)
        if self.tls is not None:
            ports = ["--port", "0", "--tls-port", str(port), *self.tls.server_args()]
            ports += ["--tls-cluster", "yes", "--tls-replication", "yes"]
        else:
            ports = ["--port", str(port)]
        self.procs[port] = subprocess.Popen(
            [
                self.binary,
                *ports,
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "2000",
                # A replica may take over however long ago it last heard from its master:
                # on a loaded machine its link can lag, and a refused failover would leave
                # the killed master's slots unserved.
                "--cluster-replica-validity-factor",
                "0",
                "--appendonly",
                "no",
                "--save",
                "",
                "--dir",
                str(node_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(port, self.procs[port])

    def create(self) -> None:
        for port in self.ports:
            self.start_node(port)
        tls = ["--tls", "--cacert", str(self.tls.ca)] if self.tls is not None else []
        subprocess.run(
            [
                self.cli,
                *tls,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.wait_ok()

    def call(self, port: int, *args: str) -> Any:
        """One command to one node."""
        import redis

        options = self.tls.client_options() if self.tls is not None else {}
        with redis.Redis(port=port, socket_timeout=5, decode_responses=True, **options) as client:
            return client.execute_command(*args)

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def wait_ok(self, timeout: float = 60) -> None:
        """Until every live node says ``cluster_state:ok``, agrees on who serves every
        slot, and every replica's link to its master is up (a hang guard, not a timed
        assertion)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = [self.call(p, "CLUSTER", "INFO") for p in self.alive()]
                maps = {repr(self.slot_map(p)) for p in self.alive()}
                links = [self.call(p, "INFO", "replication") for p in self.alive()]
                synced = all(
                    r.get("role") != "slave" or r.get("master_link_status") == "up" for r in links
                )
                if all("cluster_state:ok" in s for s in states) and len(maps) == 1 and synced:
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ok")
            time.sleep(0.1)

    def slot_map(self, port: int) -> list[tuple[int, int, int]]:
        """(first slot, last slot, master port) as ``port`` sees them."""
        return sorted(
            (int(r[0]), int(r[1]), int(r[2][1])) for r in self.call(port, "CLUSTER", "SLOTS")
        )

    def master_of(self, slot: int) -> int:
        """The port of the master serving ``slot`` (as a live node sees it)."""
        for first, last, port in self.slot_map(self.alive()[0]):
            if first <= slot <= last:
                return port
        raise LookupError(f"no master serves slot {slot}")

    def wait_failover(self, killed: int, timeout: float = 60) -> None:
        """Until no live node names ``killed`` as a master any more (a replica took its
        slots), then until the cluster is ok (a hang guard, not a timed assertion)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                maps = [self.slot_map(p) for p in self.alive()]
                if all(master != killed for m in maps for _, _, master in m):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica took over from {killed}")
            time.sleep(0.1)
        self.wait_ok(timeout)

    def node_id(self, port: int) -> str:
        return str(self.call(port, "CLUSTER", "MYID"))

    def kill(self, port: int) -> None:
        """SIGKILL one node, as in a crash."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)


@contextmanager
def redis_cluster(*, tls: bool = False) -> Iterator[RedisClusterNodes]:
    """A fresh six-node Redis Cluster on loopback (three masters, three replicas); with
    ``tls``, TLS only, its CA in ``cluster.tls``."""
    binary = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if binary is None or cli is None:
        missing("redis-server and redis-cli", "apt-get install redis-server")
        raise AssertionError("unreachable")
    with tempfile.TemporaryDirectory() as tmp:
        files = make_tls_files(Path(tmp) / "tls") if tls else None
        cluster = RedisClusterNodes(binary, cli, Path(tmp), files)
        try:
            cluster.create()
            yield cluster
        finally:
            cluster.stop()
