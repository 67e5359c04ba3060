#!/usr/bin/env python3
"""Summarize a peer_bench results JSON as a Markdown section for BENCHMARKS.md, checked against our targets.

Usage:
    python3 bench/summarize.py bench/results/peer_bench_<run>.json [--target tollgate] [--check]

It prints, for the target (default `tollgate`):
- added latency at c=1 (target p50/p99 minus the bare fake upstream's, same run) for JSON and SSE;
- throughput at c=32, and its ratio to LiteLLM's, to `ref-aiohttp`'s (the minimal Starlette + aiohttp passthrough)
  and to `ref-aiohttp-raw`'s (the same proxy as a plain ASGI callable);
- gateway CPU per request at c=32, RSS after the run, time from start to the first 200;
- a pass / miss column against the targets in bench/README.md,
then one row per target of the run for context, and warnings (failed response checks, errors, noise).

With --check the exit status is 1 when a target is missed or a figure is missing. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCENARIOS = ("c1_plain", "c1_sse", "c32_plain", "c32_sse")
MODES = (("plain", "JSON"), ("sse", "SSE"))
MB_PER_MIB = 2**20 / 1e6
NOISE_PCT = 10.0  # the harness's README: treat a scenario with more noise than this as suspect

# Targets (bench/README.md, "Targets"). None: reported, no target.
P50_JSON_MS = 1.0
P99_JSON_MS = 3.0
P50_SSE_MS = 1.5
LITELLM_MIN_RATIO = 20.0
REF_MIN_RATIO = 0.60
RSS_MAX_MB = 120.0
READY_MAX_S = 1.5

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    value: float | None
    shown: str
    target: str = "–"
    ok: Callable[[float], bool] | None = None

    @property
    def verdict(self) -> str:
        if self.ok is None:
            return "–"
        if self.value is None:
            return "**missing**"
        return "pass" if self.ok(self.value) else "**miss**"


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class Run:
    def __init__(self, data: Json) -> None:
        self.meta: Json = data.get("meta") or {}
        self.targets: dict[str, Json] = data.get("targets") or {}
        self.derived: dict[str, Json] = data.get("derived") or {}

    def has(self, name: str) -> bool:
        return name in self.targets

    def scenario(self, name: str, scenario: str) -> Json:
        found = _get(self.targets.get(name), "scenarios", scenario)
        return found if isinstance(found, dict) else {}

    def rps(self, name: str, scenario: str) -> float | None:
        return _num(self.scenario(name, scenario).get("rps"))

    def added_ms(self, name: str, mode: str, pct: str) -> float | None:
        """Target p50/p99 minus direct's at c=1 (the harness's derived figure, else computed)."""
        value = _num(_get(self.derived, name, mode, f"c1_{pct}_overhead_ms"))
        if value is not None:
            return value
        mine = _num(_get(self.scenario(name, f"c1_{mode}"), "lat_us", pct))
        base = _num(_get(self.scenario("direct", f"c1_{mode}"), "lat_us", pct))
        return None if mine is None or base is None else (mine - base) / 1000

    def cpu_us(self, name: str, scenario: str) -> float | None:
        return _num(_get(self.scenario(name, scenario), "cpu", "gw_us_per_req"))

    def gw_core_pct(self, name: str, scenario: str) -> float | None:
        return _num(_get(self.scenario(name, scenario), "cpu", "gw_core_gw_pct"))

    def rss_mib(self, name: str) -> float | None:
        """RSS after the last scenario (c32_sse), else the largest after any scenario."""
        last = _num(_get(self.scenario(name, "c32_sse"), "rss_mib_after", "gw"))
        if last is not None:
            return last
        seen = [_num(_get(self.scenario(name, s), "rss_mib_after", "gw")) for s in SCENARIOS]
        values = [v for v in seen if v is not None]
        return max(values) if values else None

    def ready_s(self, name: str) -> float | None:
        return _num(_get(self.targets.get(name), "startup_s"))

    def ratio(self, name: str, other: str, scenario: str) -> float | None:
        mine, theirs = self.rps(name, scenario), self.rps(other, scenario)
        if mine is None or not theirs:
            return None
        return mine / theirs


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} ms"


def times(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}×" if value >= 10 else f"{value:.2f}×"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ({value * 100:.0f}%)"


def num(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def headline(run: Run, name: str, litellm: str, ref: str, ref_raw: str) -> list[Row]:
    rows = [
        Row(
            "added latency p50, JSON, c=1",
            (v := run.added_ms(name, "plain", "p50")),
            ms(v),
            f"≤ {P50_JSON_MS:g} ms",
            lambda x: x <= P50_JSON_MS,
        ),
        Row(
            "added latency p99, JSON, c=1",
            (v := run.added_ms(name, "plain", "p99")),
            ms(v),
            f"≤ {P99_JSON_MS:g} ms",
            lambda x: x <= P99_JSON_MS,
        ),
        Row(
            "added latency p50, SSE, c=1",
            (v := run.added_ms(name, "sse", "p50")),
            ms(v),
            f"≤ {P50_SSE_MS:g} ms",
            lambda x: x <= P50_SSE_MS,
        ),
        Row("added latency p99, SSE, c=1", (v := run.added_ms(name, "sse", "p99")), ms(v)),
    ]
    for mode, label in MODES:
        sc = f"c32_{mode}"
        busy = run.gw_core_pct(name, sc)
        note = "" if busy is None else f" (gateway core {busy:.0f}% busy)"
        rows.append(Row(f"throughput, {label}, c=32", (v := run.rps(name, sc)), num(v, " req/s") + note))
    for mode, label in MODES:
        sc = f"c32_{mode}"
        rows.append(
            Row(
                f"÷ LiteLLM ({litellm}), {label}, c=32",
                (v := run.ratio(name, litellm, sc)),
                times(v),
                f"≥ {LITELLM_MIN_RATIO:g}×",
                lambda x: x >= LITELLM_MIN_RATIO,
            )
        )
    for mode, label in MODES:
        sc = f"c32_{mode}"
        rows.append(
            Row(
                f"÷ {ref} (minimal aiohttp passthrough), {label}, c=32",
                (v := run.ratio(name, ref, sc)),
                pct(v),
                f"≥ {REF_MIN_RATIO:.2f} ({REF_MIN_RATIO:.0%})",
                lambda x: x >= REF_MIN_RATIO,
            )
        )
    for mode, label in MODES:
        sc = f"c32_{mode}"
        rows.append(
            Row(f"÷ {ref_raw} (plain-ASGI passthrough), {label}, c=32", (v := run.ratio(name, ref_raw, sc)), pct(v))
        )
    for mode, label in MODES:
        sc = f"c32_{mode}"
        mine, theirs = run.cpu_us(name, sc), run.cpu_us(ref, sc)
        extra = "" if theirs is None else f" ({ref}: {theirs:,.0f} µs)"
        rows.append(Row(f"gateway CPU per request, {label}, c=32", mine, num(mine, " µs") + extra))
    rss = run.rss_mib(name)
    rows.append(
        Row(
            "gateway RSS after the run",
            None if rss is None else rss * MB_PER_MIB,
            "n/a" if rss is None else f"{rss * MB_PER_MIB:.0f} MB ({rss:.1f} MiB)",
            f"≤ {RSS_MAX_MB:g} MB",
            lambda x: x <= RSS_MAX_MB,
        )
    )
    rows.append(
        Row(
            "ready to serve after start",
            (v := run.ready_s(name)),
            num(v, " s", 1),
            f"≤ {READY_MAX_S:g} s",
            lambda x: x <= READY_MAX_S,
        )
    )
    return rows


def peer_table(run: Run, ref: str) -> list[str]:
    lines = [
        "| target | +p50 ms json / sse | +p99 ms json / sse | c=32 req/s json / sse | ÷ direct json / sse "
        f"| ÷ {ref} json / sse | CPU µs/req @c32 json / sse | RSS MiB | ready s |",
        "|---|---|---|---|---|---|---|---:|---:|",
    ]

    def pair(a: str, b: str) -> str:
        return f"{a} / {b}"

    def f2(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.2f}"

    def f4(x: float | None) -> str:
        return "n/a" if x is None else (f"{x:.2f}" if x >= 0.1 else f"{x:.4f}")

    for name in run.targets:
        if name == "direct-end":
            continue
        if name == "direct":
            lines.append(
                "| direct (floor) | p50 "
                + pair(*(num(_num(_get(run.scenario(name, f"c1_{m}"), "lat_us", "p50")), "", 0) for m, _ in MODES))
                + " µs | p99 "
                + pair(*(num(_num(_get(run.scenario(name, f"c1_{m}"), "lat_us", "p99")), "", 0) for m, _ in MODES))
                + " µs | "
                + pair(*(num(run.rps(name, f"c32_{m}")) for m, _ in MODES))
                + " | 1 / 1 | – | – | – | – |"
            )
            continue
        direct = [run.ratio(name, "direct", f"c32_{m}") for m, _ in MODES]
        vs_ref = [run.ratio(name, ref, f"c32_{m}") for m, _ in MODES] if run.has(ref) else [None, None]
        lines.append(
            f"| {name} | "
            + pair(*(f2(run.added_ms(name, m, "p50")) for m, _ in MODES))
            + " | "
            + pair(*(f2(run.added_ms(name, m, "p99")) for m, _ in MODES))
            + " | "
            + pair(*(num(run.rps(name, f"c32_{m}")) for m, _ in MODES))
            + " | "
            + pair(*(f4(x) for x in direct))
            + " | "
            + pair(*(f4(x) for x in vs_ref))
            + " | "
            + pair(*(num(run.cpu_us(name, f"c32_{m}")) for m, _ in MODES))
            + " | "
            + f"{num(run.rss_mib(name), '', 0)} | {num(run.ready_s(name), '', 1)} |"
        )
    return lines


def warnings(run: Run, name: str) -> list[str]:
    out: list[str] = []
    for tname, t in run.targets.items():
        if t.get("error"):
            out.append(f"{tname}: {t['error']}")
        for kind in ("plain", "sse"):
            check = _get(t, "sanity", kind)
            if isinstance(check, dict) and not check.get("ok", True):
                problems = "; ".join(str(p) for p in check.get("problems") or []) or "failed"
                out.append(f"{tname}: {'JSON' if kind == 'plain' else 'SSE'} response check failed: {problems}")
        if t.get("kind") == "gateway" and not t.get("error"):
            missing = [s for s in SCENARIOS if "rps" not in run.scenario(tname, s)]
            if missing:
                out.append(f"{tname}: no result for {', '.join(missing)} (see the run dir's wrk output)")
        noisy: list[str] = []
        for sc in SCENARIOS:
            s = run.scenario(tname, sc)
            errors = s.get("errors")
            total: int = sum(int(v) for v in errors.values()) if isinstance(errors, dict) else 0
            if isinstance(errors, dict) and total:
                detail = ", ".join(f"{k} {v}" for k, v in errors.items() if v)
                out.append(f"{tname} {sc}: wrk errors ({detail}) in {s.get('requests', '?')} requests")
            noise = max(
                _num(_get(s, "cpu", "other_pct_of_core")) or 0.0, _num(_get(s, "cpu", "gw_core_other_pct")) or 0.0
            )
            if noise > NOISE_PCT:
                noisy.append(f"{sc} {noise:.0f}%")
        if noisy:
            out.append(f"{tname}: other processes used CPU during {', '.join(noisy)} (of a core); treat as suspect")
    if not run.has(name):
        out.insert(0, f"target {name!r} is not in this run (targets: {', '.join(run.targets)})")
    return out


def render(run: Run, name: str, litellm: str, ref: str, ref_raw: str) -> tuple[str, list[Row]]:
    meta = run.meta
    upstream = meta.get("upstream_mode") or "nginx"
    up_text = "nginx (each SSE body in one write)" if upstream == "nginx" else "events (one write per SSE event"
    if upstream == "events":
        gap = meta.get("upstream_gap_us")
        up_text += f", gap {gap} µs" if gap else ", no gap"
        up_text += f", {meta.get('upstream_framing', 'chunked')})"
    rows = headline(run, name, litellm, ref, ref_raw)
    lines = [
        f"## {name} vs peers: run {meta.get('run_id', '?')} ({meta.get('date_utc', '?')})",
        "",
        f"Upstream: {up_text}. Scenarios {meta.get('duration', '?')} each after a {meta.get('warmup', '?')} warmup; "
        f"c={meta.get('conc_lat', 1)} for latency, c={meta.get('conc_tput', 32)} for throughput. "
        f"Pinning: {meta.get('pinning', '?')}. Machine: {meta.get('nproc', '?')} × {meta.get('cpu_model', '?')}, "
        f"kernel {meta.get('kernel', '?')}.",
    ]
    version = _get(run.targets.get(name), "version")
    if version:
        lines += ["", f"{name}: {version}"]
    lines += [
        "",
        f"Added latency = {name} minus direct (the bare fake upstream) in the same run; ratios are req/s ÷ req/s.",
        "",
        "| figure | value | target | result |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.figure} | {r.shown} | {r.target} | {r.verdict} |" for r in rows]
    if upstream == "events" and meta.get("upstream_gap_us"):
        lines += [
            "",
            "With gaps between events, c=32 SSE req/s is bounded by the gaps (see direct's): read the SSE "
            "CPU per request rather than the SSE ratios.",
        ]
    lines += ["", "Every target of the run:", "", *peer_table(run, ref)]
    warn = warnings(run, name)
    if warn:
        lines += ["", "Warnings:", "", *(f"- {w}" for w in warn)]
    return "\n".join(lines) + "\n", rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="peer_bench_<run>.json")
    parser.add_argument("--target", default="tollgate", help="the gateway to summarize (default: tollgate)")
    parser.add_argument("--litellm", default="litellm", help="LiteLLM's target name (default: litellm)")
    parser.add_argument("--ref", default="ref-aiohttp", help="minimal aiohttp passthrough (default: ref-aiohttp)")
    parser.add_argument(
        "--ref-raw", default="ref-aiohttp-raw", help="plain-ASGI passthrough (default: ref-aiohttp-raw)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed or a figure is missing")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.results.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"summarize.py: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(data, dict) or "targets" not in data:
        print(f"summarize.py: {args.results} is not a peer_bench results JSON", file=sys.stderr)
        return 2
    text, rows = render(Run(data), args.target, args.litellm, args.ref, args.ref_raw)
    sys.stdout.write(text)
    if args.check and any(r.verdict != "pass" for r in rows if r.ok is not None):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
