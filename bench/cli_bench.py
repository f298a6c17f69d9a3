"""Wall time of control-plane CLI commands (issue: under 300 ms on this machine).

    python bench/cli_bench.py [--runs 10]

Creates a throw-away SQLite control plane with a few tenants and databases rows, then runs
``ogelkit tenants list``, ``tenants show``, ``databases list`` and ``usage show`` (each a
new Python process, as an operator runs them) and, for comparison, ``ogelkit check``
(which validates every plugin's options, so it imports every plugin). Prints the median
and the minimum per command. Not a timed test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ogelkit-cli-bench-")
    key = subprocess.run([sys.executable, "-m", "ogelkit", "secret-key"], capture_output=True,
                         text=True, check=True).stdout.strip()
    env = {**os.environ, "OGELKIT_CONFIG": str(ROOT / "examples" / "local.toml"),
           "OGELKIT_SECRET_KEY": key, "OGELKIT_CONTROL_URL": f"sqlite:///{work}/control.db"}

    def run(*argv: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ogelkit", *argv], env=env, check=True,
                       capture_output=True)
        return time.perf_counter() - t0

    for i in range(5):
        run("tenants", "create", f"bench{i}", "--tier", "starter")
    commands = [("tenants", "list"), ("tenants", "show", "bench0"), ("databases", "list"),
                ("usage", "show", "bench0"), ("check", str(ROOT / "examples" / "local.toml"))]
    for argv in commands:
        times = [run(*argv) for _ in range(args.runs)]
        print(f"ogelkit {' '.join(a if '/' not in a else Path(a).name for a in argv):<28} "
              f"median {statistics.median(times) * 1000:5.0f} ms   "
              f"min {min(times) * 1000:5.0f} ms")


if __name__ == "__main__":
    main()
