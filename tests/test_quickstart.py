"""The README's quickstart, run as a user would: `make run`, `tollgate keys create`, then a plain HTTP call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.threads import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_make_run_then_a_key_then_curl_returns_a_mock_completion(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "TOLLGATE_PORT": str(port), "TOLLGATE_DATA_DIR": str(tmp_path / "data")}
    env.pop("TOLLGATE_ADMIN_KEY", None)
    log = (tmp_path / "run.log").open("wb")
    # Its own process group, so stopping it stops make's child (the gateway) too.
    server = subprocess.Popen(
        ["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError((tmp_path / "run.log").read_text())
        created = subprocess.run(
            [sys.executable, "-m", "gateway", "keys", "create", "--team", "demo"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        key = created.stdout.strip()
        assert key.startswith("tg-") and "\n" not in key

        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            content=b'{"model": "mock/echo", "messages": [{"role": "user", "content": "hello"}]}',
        )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "hello"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
        log.close()
    output = (tmp_path / "run.log").read_text()
    # The banner tells a new user where the gateway is and how to get a key.
    assert f"http://127.0.0.1:{port}/v1" in output
    assert "tollgate keys create" in output
