"""Launcher for a real llama.cpp model server (xllamacpp), run as a subprocess by ``model_server.py``.

It loads a GGUF file, lets llama.cpp's own HTTP server bind 127.0.0.1 on a port the OS picks, writes the
address it got to ``--address-file`` (atomically, once the model is loaded) and then idles until it is
terminated or its parent process goes away. Kept as its own process so that a native crash cannot take
pytest down with it.

    python tests/support/model_server_main.py --model path/to/model.gguf --address-file /tmp/addr
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="path of the GGUF file")
    parser.add_argument("--alias", default="", help="model name the server reports in /v1/models and responses")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS pick a free port")
    parser.add_argument("--ctx-size", type=int, default=2048, help="total context, split over --parallel slots")
    parser.add_argument("--parallel", type=int, default=2, help="requests decoded concurrently")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--address-file", type=Path, help="where to write http://HOST:PORT once ready")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    import xllamacpp as xlc  # type: ignore[import-untyped]  # late: loading the native library takes a moment

    params = xlc.CommonParams()
    params.model.path = args.model
    if args.alias:
        params.model_alias = {args.alias}
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx_size
    params.n_parallel = args.parallel
    params.n_gpu_layers = 0  # CPU only
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.n_threads_http = 4
    params.ui = False

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    server = xlc.Server(params)  # returns once the model is loaded and the HTTP server listens
    address: str = server.listening_address
    print(f"model server listening on {address}", file=sys.stderr, flush=True)
    if args.address_file is not None:
        tmp = args.address_file.with_name(args.address_file.name + ".tmp")
        tmp.write_text(address)
        tmp.replace(args.address_file)

    parent = os.getppid()
    while not stop.wait(0.5):
        if os.getppid() != parent:  # orphaned: whoever started us is gone (e.g. pytest was killed)
            break
    # Skip interpreter teardown: destroying the native server from a finalizer can block on its threads.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
