#!/usr/bin/env bash
# bench/run.sh -- Tollgate's benchmark: the shared peer harness (peer_bench.sh) with Tollgate as one more target,
# measured in the same run as the bare fake upstream ("direct") and the peer proxies.
#
# Usage:
#   bench/run.sh                                   # direct + ref-aiohttp + ref-aiohttp-raw + litellm + tollgate (~9 min)
#   bench/run.sh --upstream events                 # each SSE event its own write, as a real provider streams
#   bench/run.sh --upstream events --upstream-gap-us 1000   # ... with ~1 ms between events
#   bench/run.sh --no-peers                        # direct + tollgate only (~3 min)
#   bench/run.sh --preset ref-aiohttp              # any --preset replaces the default peer presets
#   bench/run.sh --duration 5s --warmup 1s         # shorter scenarios (noisier)
#   bench/run.sh --help
#
# Options of this script:
#   --no-peers   run no peer presets (only direct and tollgate), unless --preset is given
#   -h, --help   this text
# Every other argument is passed to peer_bench.sh unchanged (see `peer_bench.sh --help`): --upstream,
# --upstream-gap-us, --upstream-framing, --duration, --warmup, --conc-lat, --conc-tput, --gw-cpu, --wrk-cpu,
# --nginx-cpu, --out, --no-install, --no-direct-end, --preset.
#
# Environment:
#   PEER_BENCH          the harness (default: $ROOT/../shared/bench/peer_bench.sh)
#   BENCH_WORK          the harness's scratch dir (default /tmp/bench): venvs, nginx prefix, runs/<run>/ with the
#                       raw wrk output, server logs and captured responses
#   TOLLGATE_BENCH_PORT port of the gateway under test (default 14300)
#   BENCH_KEEP_DATA=1   keep the temporary data dir (key store, metering DB) instead of deleting it
#
# What it does:
#   1. checks that `make install` has been run (.venv/bin/tollgate)
#   2. makes a temporary data dir and creates a virtual key in it (`tollgate keys create --team bench`)
#   3. runs peer_bench.sh with the target `tollgate`: `tollgate serve --policy bench/policy.yaml` on
#      127.0.0.1:14300, started in the repo root, pinned by the harness to its own core (--gw-cpu, default CPU 1;
#      wrk and the fake upstream share CPU 0), aliases bench-plain (JSON) and bench-sse (SSE), bearer = the key
#   4. copies the run's results (peer_bench_<run>.md / .json) into bench/results/ and prints
#      `bench/summarize.py` on them: the figures against our targets (bench/README.md)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEER_BENCH=${PEER_BENCH:-$ROOT/../shared/bench/peer_bench.sh}
TOLLGATE=$ROOT/.venv/bin/tollgate
PYTHON=$ROOT/.venv/bin/python
PORT=${TOLLGATE_BENCH_PORT:-14300}
RESULTS=$ROOT/bench/results

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
log() { echo "[bench/run.sh] $*" >&2; }

peers=(--preset ref-aiohttp --preset ref-aiohttp-raw --preset litellm)
pass=()
out_dir=""
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --no-peers) peers=(); shift ;;
    --preset)
      [ $# -ge 2 ] || { log "--preset needs a value"; exit 2; }
      peers=(); pass+=("$1" "$2"); shift 2 ;;
    --out)
      [ $# -ge 2 ] || { log "--out needs a value"; exit 2; }
      out_dir=$2; shift 2 ;;
    *) pass+=("$1"); shift ;;
  esac
done

if [ ! -x "$TOLLGATE" ]; then
  log "$TOLLGATE not found: run \`make install\` in $ROOT first."
  exit 1
fi
if [ ! -x "$PEER_BENCH" ]; then
  log "peer harness not found at $PEER_BENCH (set PEER_BENCH=/path/to/peer_bench.sh)."
  exit 1
fi

# Keys and metering go to the temporary data dir, never to a database named in the environment.
unset DATABASE_URL

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")
DATA=$TMP/data
mkdir -p "$DATA"
cleanup() {
  if [ "${BENCH_KEEP_DATA:-0}" = 1 ]; then
    log "kept the data dir: $DATA"
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT

# The CLI prints the key alone on stdout; its human text goes to stderr.
KEY=$(cd "$ROOT" && "$TOLLGATE" keys create --team bench --data-dir "$DATA")
if [ -z "$KEY" ] || [ "$(printf '%s\n' "$KEY" | wc -l)" -ne 1 ]; then
  log "tollgate keys create did not print one key on stdout (got: '$KEY')"
  exit 1
fi

# Foreground server; `exec` so the harness's process group signal reaches it directly. BENCH_UPSTREAM is exported
# by the harness; bench/policy.yaml routes through it. The upstream key is a dummy (the fake upstream ignores it).
START="BENCH_UPSTREAM_KEY=\${BENCH_UPSTREAM_KEY:-sk-upstream-dummy} exec $(printf '%q' "$TOLLGATE") serve \
--policy $(printf '%q' "$ROOT/bench/policy.yaml") --host 127.0.0.1 --port $PORT --data-dir $(printf '%q' "$DATA")"
# Versions for the report, printed the way the harness prints the presets' (tollgate's from its install metadata).
VERSION_CMD="$(printf '%q' "$PYTHON") $(printf '%q' "$(dirname "$PEER_BENCH")/pkg_versions.py") \
tollgate uvicorn uvloop httptools aiohttp orjson PyYAML SQLAlchemy aiosqlite"

# Results go to a fresh directory (unless --out was given), so the run's files are easy to find; they are
# copied into bench/results/ afterwards.
[ -n "$out_dir" ] || out_dir=$TMP/results
mkdir -p "$out_dir" "$RESULTS"
before=$(ls "$out_dir")

log "harness: $PEER_BENCH"
rc=0
"$PEER_BENCH" "${peers[@]}" "${pass[@]}" --out "$out_dir" \
  --target tollgate --start "$START" --cwd "$ROOT" --port "$PORT" \
  --model-plain bench-plain --model-sse bench-sse --key "$KEY" \
  --version-cmd "$VERSION_CMD" --ready-timeout 60 || rc=$?

json=""
for f in "$out_dir"/peer_bench_*.json "$out_dir"/peer_bench_*.md; do
  [ -e "$f" ] || continue
  grep -qxF "$(basename "$f")" <<< "$before" && continue
  cp "$f" "$RESULTS/"
  log "copied $(basename "$f") -> bench/results/"
  case $f in *.json) json=$RESULTS/$(basename "$f") ;; esac
done

if [ "$rc" -ne 0 ]; then
  log "peer_bench.sh exited with $rc (server logs and raw output: ${BENCH_WORK:-/tmp/bench}/runs/)"
  exit "$rc"
fi
if [ -z "$json" ]; then
  log "no results file found in $out_dir"
  exit 1
fi
echo
"$PYTHON" "$ROOT/bench/summarize.py" "$json" || log "summarize.py failed on $json"
