"""The TypeScript SDK (`clients/typescript`): its own suite, run by Node's test runner
against a real `tollhouse serve` that the suite starts itself (`npm ci && npm run build
&& npm test`). Node is skipped locally when absent and required in CI (scripts/test
installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.services import missing

PACKAGE = REPO / "clients" / "typescript"

pytestmark = pytest.mark.integration


def _run(
    command: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=PACKAGE, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(900)
def test_typescript_sdk_suite() -> None:
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        missing("node and npm", "apt-get install nodejs npm")
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLHOUSE_")}
    # The suite's server is this checkout's tollhouse, run by this interpreter's venv.
    env["TOLLHOUSE_BIN"] = str(Path(sys.executable).with_name("tollhouse"))
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    for step, timeout in ((["ci", "--no-audit", "--no-fund"], 300), (["run", "build"], 300)):
        done = _run([npm, *step], env, timeout)
        assert done.returncode == 0, f"npm {' '.join(step)}:\n{done.stdout}\n{done.stderr}"
    done = _run([npm, "test"], env, 600)
    summary = "\n".join(done.stdout.splitlines()[-10:])
    assert done.returncode == 0, f"npm test failed:\n{done.stdout[-20000:]}\n{done.stderr[-5000:]}"
    assert "# fail 0" in done.stdout, summary
    assert "# pass " in done.stdout and "# pass 0\n" not in done.stdout, summary
