"""The SDK as a distribution of its own, ``tollhouse-client`` (``clients/python``).

What it ships (the repository's own files, nothing of the server), that its metadata
follows the root ``pyproject.toml``, that its modules import nothing beyond the standard
library, httpx and orjson, and — built and installed into a fresh virtualenv — that it
brings only those and works there while the server is absent.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "tollhouse"
SDK = ROOT / "clients" / "python"
SDK_PACKAGE = SDK / "src" / "tollhouse"

#: Everything the SDK distribution ships under ``tollhouse/`` (no ``__init__.py``: there
#: ``tollhouse`` is a namespace package, so the server's ``__init__`` is never replaced).
SHIPPED = {"client", "errors.py", "times.py", "webhooks.py", "py.typed"}
#: What the SDK may import besides the standard library and its own modules.
DEPENDENCIES = {"httpx", "orjson"}
#: Distributions of the server's stack; none may come with the SDK.
SERVER_STACK = {
    "tollhouse",
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "redis",
    "hiredis",
    "fastapi",
    "starlette",
    "uvicorn",
    "websockets",
    "typer",
    "rich",
    "prometheus-client",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return canonical(match.group())


def sdk_files() -> dict[str, Path]:
    """Path in the wheel (``tollhouse/client/_base.py``) → the file in ``src/tollhouse``."""
    files: dict[str, Path] = {}
    for name in SHIPPED:
        target = (SDK_PACKAGE / name).resolve()
        if target.is_dir():
            for path in sorted(target.rglob("*.py")):
                files[f"tollhouse/{name}/{path.relative_to(target).as_posix()}"] = path
        else:
            files[f"tollhouse/{name}"] = target
    return files


def module_name(wheel_path: str) -> str:
    parts = wheel_path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.Module, package: str) -> Iterator[tuple[int, str, str | None]]:
    """``(line, module, imported name or None)`` for every import, nested ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                yield node.lineno, module, alias.name


def test_the_sdk_tree_is_the_repositorys_own_files() -> None:
    """``clients/python/src/tollhouse`` holds links to ``src/tollhouse``, not copies."""
    assert {p.name for p in SDK_PACKAGE.iterdir() if p.name != "__pycache__"} == SHIPPED
    for name in SHIPPED:
        assert (SDK_PACKAGE / name).is_symlink(), name
        assert (SDK_PACKAGE / name).resolve() == (SOURCE / name).resolve(), name


def test_the_sdk_imports_only_the_standard_library_httpx_and_orjson() -> None:
    files = sdk_files()
    shipped = {module_name(path) for path in files if path.endswith(".py")}
    wrong = []
    for path, source in files.items():
        if not path.endswith(".py"):
            continue
        name = module_name(path)
        package = name if path.endswith("/__init__.py") else name.rpartition(".")[0]
        tree = ast.parse(source.read_text(), str(source))
        for line, module, imported in imports(tree, package):
            top = module.split(".")[0]
            if top == "tollhouse":
                # The SDK has no tollhouse/__init__.py: from `tollhouse` itself only its
                # own modules can be imported.
                submodule = f"{module}.{imported}" if imported else module
                where = ROOT / "src" / submodule.replace(".", "/")
                is_module = where.is_dir() or where.with_suffix(".py").is_file()
                if module == "tollhouse" or is_module:
                    ok = submodule in shipped
                else:
                    ok = module in shipped
                if not ok:
                    wrong.append(f"{path}:{line}: {submodule}")
            elif top not in sys.stdlib_module_names and top not in DEPENDENCIES:
                wrong.append(f"{path}:{line}: {module}")
    assert not wrong, "the SDK distribution would not have these:\n" + "\n".join(wrong)


def test_the_sdk_metadata_follows_the_root_project() -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    sdk = tomllib.loads((SDK / "pyproject.toml").read_text())
    assert sdk["project"]["name"] == "tollhouse-client"
    for key in ("version", "requires-python", "license"):
        assert sdk["project"][key] == root["project"][key], key
    # The same specifiers as the full product's, so both resolve alike.
    assert set(sdk["project"]["dependencies"]) <= set(root["project"]["dependencies"])
    assert {requirement_name(r) for r in sdk["project"]["dependencies"]} == DEPENDENCIES
    assert sdk["build-system"]["build-backend"] == root["build-system"]["build-backend"]


def run(command: Sequence[str | Path], cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited {done.returncode}\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )
    return done.stdout


#: Run by the fresh virtualenv's interpreter: every distribution that tollhouse-client
#: requires, directly or through its requirements (extras not asked for left out).
REQUIRED = """
import importlib.metadata as md, json, re

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

seen, todo = set(), ["tollhouse-client"]
while todo:
    name = canonical(todo.pop())
    if name in seen:
        continue
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue  # a requirement whose marker does not apply here
    seen.add(name)
    for requirement in dist.requires or []:
        if not re.search(r"\\bextra\\s*==", requirement):
            todo.append(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group())
print(json.dumps(sorted(seen)))
"""

#: Run by the fresh virtualenv's interpreter: the SDK works, the server is not there.
USE = """
import asyncio, json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tollhouse.client
import tollhouse.webhooks
from tollhouse.client import AsyncClient, Client, TollhouseAPIError

assert tollhouse.client.__file__.startswith(sys.prefix), tollhouse.client.__file__

class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ok"}).encode()
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_address[1]}"
with Client(api_key="sk_test_sdk", base_url=url) as client:
    assert client.health().ok

async def main():
    async with AsyncClient(api_key="sk_test_sdk", base_url=url) as client:
        assert (await client.health()).ok

asyncio.run(main())
server.shutdown()

secret, body = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHM=", b'{"type": "score.completed"}'
headers = {
    "webhook-id": "msg_1",
    "webhook-timestamp": "1800000000",
    "webhook-signature": tollhouse.webhooks.sign(body, secret, "msg_1", 1800000000),
}
assert tollhouse.webhooks.verify(body, headers, secret, now=1800000000) == {
    "type": "score.completed"
}

try:
    import tollhouse.http
except ModuleNotFoundError as exc:
    assert exc.name == "tollhouse.http", exc.name
else:
    raise AssertionError("the server is importable from the SDK alone")
print("ok")
"""


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_sdk_installs_alone(tmp_path: Path) -> None:
    """Built from a plain copy (links resolved, as in its sdist) and installed into a new
    virtualenv: only tollhouse-client, httpx, orjson and what they require."""
    source = tmp_path / "source"
    shutil.copytree(
        SDK, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp_path / "wheels", source])
    (wheel,) = (tmp_path / "wheels").glob("tollhouse_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {n for n in archive.namelist() if not n.startswith("tollhouse_client-")}
    assert packaged == set(sdk_files())

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run([*pip, "--python", python, "install", "--quiet", wheel])

    listed = json.loads(run([*pip, "--python", python, "list", "--format", "json"]))
    installed = {canonical(entry["name"]) for entry in listed}
    assert {"tollhouse-client", *DEPENDENCIES} <= installed
    assert not installed & SERVER_STACK
    required = set(json.loads(run([python, "-I", "-c", REQUIRED], cwd=tmp_path)))
    assert installed <= required, f"not required by the SDK: {sorted(installed - required)}"

    assert run([python, "-I", "-c", USE], cwd=tmp_path).strip() == "ok"
