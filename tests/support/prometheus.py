"""A real Prometheus server (Debian's `prometheus` binary) on a free 127.0.0.1 port, scraping what a test names.

`make prometheus-bin` installs the binary when it is missing. Each instance gets its own config and TSDB in a
temporary directory and never touches :9090 or /var/lib/prometheus:

    with start_prometheus(["127.0.0.1:4000"]) as prom:      # or "http://127.0.0.1:4000/metrics"
        prom.wait_for_targets_up()
        rows = prom.wait_for('sum by (team) (tollgate_cost_usd_total)')
        rows[0]["metric"]["team"], float(rows[0]["value"][1])

Each target is its own scrape job, named `target-0`, `target-1`, ... in the order given.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from support.threads import free_port

PROMETHEUS_BIN = Path("/usr/bin/prometheus")


@dataclass
class RunningPrometheus:
    url: str  # http://127.0.0.1:P
    process: subprocess.Popen[bytes]
    log_path: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query: the `data.result` list (for a vector: `{"metric": {...}, "value": [ts, "1.5"]}`)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"Prometheus rejected {promql!r}: {body.get('errorType')}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The single sample's value of a query expected to return at most one series."""
        rows = self.query(promql)
        assert len(rows) <= 1, f"{promql!r} returned {len(rows)} series: {rows}"
        return float(rows[0]["value"][1]) if rows else None

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[dict[str, Any]]], object] = bool,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Re-runs the query until `predicate(result)` holds (by default: a non-empty result) and returns it."""
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = self.query(promql)
            if predicate(rows):
                return rows
            time.sleep(0.2)
        raise AssertionError(f"{promql!r} still {rows} after {timeout}s; targets: {self.targets()}")

    def targets(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/targets", timeout=10)
        response.raise_for_status()
        active: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
        return active

    def wait_for_targets_up(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Until every target has been scraped successfully at least once."""
        deadline = time.monotonic() + timeout
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = self.targets()
            if targets and all(target["health"] == "up" for target in targets):
                return targets
            time.sleep(0.2)
        states = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
        raise AssertionError(f"Prometheus targets not all up after {timeout}s: {states}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def scrape_config(scrape_targets: list[str], scrape_interval: str) -> dict[str, Any]:
    """The prometheus.yml for the targets: `host:port` (scraped at /metrics) or full `http(s)://host:port/path` URLs."""
    jobs = []
    for i, target in enumerate(scrape_targets):
        parts = urlsplit(target if "://" in target else f"http://{target}/metrics")
        jobs.append(
            {
                "job_name": f"target-{i}",
                "scheme": parts.scheme,
                "metrics_path": parts.path or "/metrics",
                "static_configs": [{"targets": [parts.netloc]}],
            }
        )
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "scrape_configs": jobs,
    }


def _require_prometheus() -> None:
    if not PROMETHEUS_BIN.exists():
        raise RuntimeError(
            f"{PROMETHEUS_BIN} is missing: run `make prometheus-bin` as root (or `make test`, which does it first)"
        )


def _wait_until_ready(prom: RunningPrometheus, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prom.process.poll() is not None:
            raise RuntimeError(f"Prometheus exited with {prom.process.returncode}:\n{prom.log_tail()}")
        try:
            if httpx.get(prom.url + "/-/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"Prometheus at {prom.url} not ready after {timeout}s:\n{prom.log_tail()}")


@contextmanager
def start_prometheus(
    scrape_targets: list[str], scrape_interval: str = "1s", timeout: float = 30.0
) -> Iterator[RunningPrometheus]:
    _require_prometheus()
    with tempfile.TemporaryDirectory(prefix="prometheus-") as tmp:
        work = Path(tmp)
        config = work / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(scrape_targets, scrape_interval), sort_keys=False))
        port = free_port()
        log_path = work / "prometheus.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    str(PROMETHEUS_BIN),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={work / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    # Debian's defaults point at /etc/prometheus; keep every path inside the temp dir.
                    f"--web.console.templates={work}",
                    f"--web.console.libraries={work}",
                    "--log.level=warn",
                ],
                cwd=work,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        prom = RunningPrometheus(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
        try:
            _wait_until_ready(prom, timeout)
            yield prom
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
