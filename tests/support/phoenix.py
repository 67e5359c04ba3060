"""Arize Phoenix, a real trace backend, as a subprocess on 127.0.0.1 for tests.

Phoenix lives in its own virtualenv (`make phoenix-venv` builds `.venv-phoenix`, ~850 MB) so its dependencies never
meet the gateway's. It takes OTLP over HTTP (`{url}/v1/traces`, on the same port as its UI and REST API) and gRPC,
stores spans in SQLite under a temporary working dir, and serves them back over REST:

    with start_phoenix() as phoenix:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
        ...
        spans = phoenix.wait_for_trace(trace_id, count=2)  # list of dicts, Phoenix's REST span shape

Start-up takes ~8-11 s on this machine (imports dominate), so share one instance per module where you can.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from support.threads import free_port

REPO = Path(__file__).resolve().parents[2]
PHOENIX_VENV = REPO / ".venv-phoenix"
PHOENIX_BIN = PHOENIX_VENV / "bin" / "phoenix"

# Keep Phoenix local and quiet: no telemetry pixels, no fonts/WASM downloads, no LLM assistant, no MCP server.
_QUIET = {
    "PHOENIX_TELEMETRY_ENABLED": "false",
    "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
    "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
    "PHOENIX_ENABLE_MCP_SERVER": "false",
    "PHOENIX_LOG_MIGRATIONS": "false",
}


@dataclass
class RunningPhoenix:
    url: str  # http://127.0.0.1:P — UI, REST API and OTLP/HTTP
    grpc_endpoint: str  # http://127.0.0.1:G — OTLP/gRPC
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def traces_url(self) -> str:
        return self.url + "/v1/traces"

    def projects(self) -> list[str]:
        response = httpx.get(f"{self.url}/v1/projects", params={"limit": 1000}, timeout=10)
        response.raise_for_status()
        return [project["name"] for project in response.json()["data"]]

    def spans_for_trace(self, trace_id: str, project: str | None = None) -> list[dict[str, Any]]:
        """Every span Phoenix stored for the trace (in `project`, or in any project), oldest first.

        Each is Phoenix's REST shape: name, context.trace_id/span_id (hex), parent_id, span_kind (OpenInference's,
        "UNKNOWN" for plain OTel spans), start_time/end_time (ISO), status_code ("OK"/"ERROR"/"UNSET"),
        status_message, attributes (flat dotted keys) and events.
        """
        spans: list[dict[str, Any]] = []
        for name in [project] if project is not None else self.projects():
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {
                    "trace_id": trace_id.lower(),
                    "limit": 1000,
                    "sort": "start_time",
                    "order": "asc",
                }
                if cursor:
                    params["cursor"] = cursor
                response = httpx.get(f"{self.url}/v1/projects/{name}/spans", params=params, timeout=10)
                response.raise_for_status()
                body = response.json()
                spans.extend(body["data"])
                cursor = body.get("next_cursor")
                if not cursor:
                    break
        return spans

    def wait_for_trace(
        self, trace_id: str, count: int = 1, timeout: float = 30.0, project: str | None = None
    ) -> list[dict[str, Any]]:
        """Phoenix writes spans in batches: poll until `count` spans of the trace are queryable."""
        deadline = time.monotonic() + timeout
        spans: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            spans = self.spans_for_trace(trace_id, project)
            if len(spans) >= count:
                return spans
            time.sleep(0.1)
        raise AssertionError(f"Phoenix has {len(spans)} of {count} spans for trace {trace_id} after {timeout}s")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _require_phoenix() -> None:
    if not PHOENIX_BIN.exists():
        raise RuntimeError(f"{PHOENIX_BIN} is missing: run `make phoenix-venv` (or `make test`, which does it first)")


def _wait_until_ready(phoenix: RunningPhoenix, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if phoenix.process.poll() is not None:
            raise RuntimeError(f"Phoenix exited with {phoenix.process.returncode}:\n{phoenix.log_tail()}")
        try:
            if httpx.get(phoenix.url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"Phoenix at {phoenix.url} not ready after {timeout}s:\n{phoenix.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # SIGTERM: ~0.4 s here; SIGINT takes ~3.5 s to wind down
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextmanager
def start_phoenix(timeout: float = 120.0, env: Mapping[str, str] | None = None) -> Iterator[RunningPhoenix]:
    """Runs Phoenix on free 127.0.0.1 ports with a throwaway working dir; stops it and deletes the dir on exit."""
    _require_phoenix()
    with tempfile.TemporaryDirectory(prefix="phoenix-") as tmp:
        work = Path(tmp)
        http_port, grpc_port = free_port(), free_port()
        environ = {
            # A clean environment: none of the caller's OTEL_* or PHOENIX_* settings leak in.
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "TMPDIR": str(work),
            "LANG": "C.UTF-8",
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(http_port),
            "PHOENIX_GRPC_PORT": str(grpc_port),  # Phoenix binds gRPC on [::]; tests only use 127.0.0.1
            "PHOENIX_WORKING_DIR": str(work),
            **_QUIET,
            **(env or {}),
        }
        log_path = work / "phoenix.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(PHOENIX_BIN), "serve"], env=environ, cwd=work, stdout=log, stderr=subprocess.STDOUT
            )
        phoenix = RunningPhoenix(
            url=f"http://127.0.0.1:{http_port}",
            grpc_endpoint=f"http://127.0.0.1:{grpc_port}",
            process=process,
            log_path=log_path,
        )
        try:
            _wait_until_ready(phoenix, timeout)
            yield phoenix
        finally:
            _stop(process)
