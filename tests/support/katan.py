"""llm-katan (echo backend: no model) serving Anthropic's, Gemini's and Bedrock's native APIs on a real socket."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support.threads import free_port

KATAN_PROVIDERS = "anthropic,vertexai,bedrock"


@dataclass
class Katan:
    url: str  # http://127.0.0.1:PORT, no path: each provider's API lives under its own prefix
    process: subprocess.Popen[bytes]
    log_path: Path


def _wait_for_katan(katan: Katan, deadline: float) -> None:
    last_error = "not started"
    while time.monotonic() < deadline:
        if katan.process.poll() is not None:
            raise RuntimeError(f"llm-katan exited while starting:\n{katan.log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(katan.url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last_error = repr(exc)
        time.sleep(0.05)
    raise RuntimeError(f"llm-katan not ready in time ({last_error})")


@contextmanager
def start_katan() -> Iterator[Katan]:
    executable = Path(sys.executable).with_name("llm-katan")
    if not executable.exists():
        raise RuntimeError("llm-katan is not installed (it is in the dev extra): pip install -e '.[dev]'")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tollgate-katan-") as tmp:
        log_path = Path(tmp) / "katan.log"
        command = [
            str(executable),
            "--model", "echo-model",
            "--backend", "echo",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--providers", KATAN_PROVIDERS,
            # Its default is ~/.llm-katan/stats.json: keep test runs out of the home directory.
            "--stats-file", str(Path(tmp) / "stats.json"),
            "--disable-dashboard",
            "--log-level", "warning",
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = Katan(f"http://127.0.0.1:{port}", process, log_path)
        try:
            _wait_for_katan(server, time.monotonic() + 30)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
