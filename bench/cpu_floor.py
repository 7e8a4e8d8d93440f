#!/usr/bin/env python3
"""What busy CPUs alone do to other requests' p99 on this machine, without the server's
hashing: the control for the login-flood row of `bench/wrk.py` (PRODUCT.md §7).

Usage (from the repository root, release binary built; wrk installed):

    python3 bench/cpu_floor.py               # both cores shared, as in production
    python3 bench/cpu_floor.py --pin         # server and wrk on CPU 0, the loops on CPU 1

It starts the release binary on a fresh SQLite file (bcrypt cost 4: no login is
measured) with 32 users, then measures GET /users/me paced (16 connections, 2 ms between
an answer and the next request; the same load as bench/wrk.py) with no other work, with
one and with two busy loops at idle priority (SCHED_IDLE) in other processes, and with
two at nice 19. The loops share nothing with the server but the CPUs.

With --pin, the server and wrk are confined to CPU 0 and the loops to CPU 1: if the p99
still rises, the cost comes from below the guest (the host's scheduling of the virtual
CPUs, shared caches); if it does not, it comes from sharing a CPU inside the guest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wrk as W  # noqa: E402  (the benchmark's own helpers)

NICE_LOOP = "import os\nos.nice(19)\nwhile True:\n    pass\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", type=Path, default=Path("target/release/introgy"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pin", action="store_true",
                        help="server and wrk on CPU 0, the busy loops on CPU 1")
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2 and args.pin:
        raise SystemExit("--pin needs two CPUs")
    if args.pin:
        # Children (the server, wrk) inherit this process's affinity.
        os.sched_setaffinity(0, {0})
    W.raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="introgy-floor-"))
    server = W.Server(args.binary, f"sqlite:{workdir / 'introgy.db'}", workdir, bcrypt_cost=4)
    try:
        tokens = [u["token"] for u in W.make_users(server, 32, "reader")]

        def loops(count: int, code: str) -> list[subprocess.Popen]:
            pin = (lambda: os.sched_setaffinity(0, {1})) if args.pin else None
            return [subprocess.Popen([sys.executable, "-c", code], preexec_fn=pin)
                    for _ in range(count)]

        cases = [("no other work", 0, ""), ("1 idle-priority loop", 1, W.BUSY_LOOP),
                 ("2 idle-priority loops", 2, W.BUSY_LOOP), ("2 loops at nice 19", 2, NICE_LOOP)]
        print(f"{args.binary}; GET /users/me paced (16 connections, {W.PACE_MS} ms pause), "
              f"{args.seconds:g} s per row; {'pinned' if args.pin else 'both CPUs shared'}")
        for _ in range(args.rounds):
            for label, count, code in cases:
                procs = loops(count, code)
                try:
                    time.sleep(0.5)
                    r = W.wrk(server.port, "/users/me", args.seconds, 16, tokens=tokens,
                              pace_ms=W.PACE_MS)
                finally:
                    for proc in procs:
                        proc.kill()
                        proc.wait()
                print(f"{label:24}{r['rps']:8.0f} req/s   p50 {r['p50']:5.2f} ms   "
                      f"p99 {r['p99']:5.2f} ms", flush=True)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
