"""Start-up cost: ``import alflb`` and ``alflb --help`` against ``import numpy, scipy.sparse``.

    python benchmarks/import_time.py [--repeat 15]

Each figure is one fresh interpreter (``python -X importtime`` is not used: it slows the
imports it measures). The three commands run in turn, A B C A B C ..., so a drift of the
machine's speed affects all three alike; the medians and their ratios are printed with
the machine. The target of the layout (docs/architecture.md) is a ratio of at most 2 for
both: the package re-exports lazily and each subcommand imports its heavy dependencies
only when it runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "numpy + scipy.sparse": [sys.executable, "-c", "import numpy, scipy.sparse"],
    "import alflb": [sys.executable, "-c", "import alflb"],
    "alflb --help": [sys.executable, "-m", "alflb", "--help"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="fresh processes per command")
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, cmd in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    from _machine import machine_line

    print(f"{machine_line()}; {args.repeat} fresh processes each, interleaved")
    base = statistics.median(times["numpy + scipy.sparse"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:22s} median {med:6.3f} s  (min {min(values):.3f}, max {max(values):.3f})"
              f"  ratio {med / base:4.2f}")


if __name__ == "__main__":
    main()
