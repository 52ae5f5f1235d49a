"""CLI start-up: wall time of `cnnlab --help`, `--version` and each command's `--help` in fresh processes.

Beside them, the floor (`python -c "import typer, rich"`) and what importing torch alone costs, in the
same sitting, interleaved over rounds (median). Goal: every --help and --version under 0.5 s.
Writes its section of BENCHMARKS.md.

    python benchmarks/cli_startup.py [--rounds 5] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import write_section  # noqa: E402

CLI = [sys.executable, "-m", "cnnlab"]
COMMANDS = {
    "cnnlab --version": [*CLI, "--version"],
    "cnnlab --help": [*CLI, "--help"],
    **{f"cnnlab {c} --help": [*CLI, *c.split(), "--help"]
       for c in ("train", "sweep run", "magic", "lds", "explain maps", "mi", "profile", "population train",
                 "models list", "data info", "runs list", "export")},
    "floor: import typer, rich": [sys.executable, "-c", "import typer, rich.console"],
    "peer cost: import torch": [sys.executable, "-c", "import torch"],
}


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.rounds):  # interleaved: each round runs every command once
        for name, cmd in COMMANDS.items():
            times[name].append(wall(cmd))
    rows = [(name, statistics.median(v), max(v)) for name, v in times.items()]
    cli = [r for r in rows if r[0].startswith("cnnlab")]
    met = all(med < 0.5 for _, med, _ in cli)
    body = ["Fresh processes, median (max) of %d interleaved rounds; torch is imported only by commands that compute." % args.rounds,
            "", "| command | median s | max s |", "|---|---:|---:|"]
    body += [f"| `{n}` | {m:.3f} | {x:.3f} |" for n, m, x in rows]
    body += ["", f"Goal: every `--help` / `--version` under 0.5 s: **{'met' if met else 'not met'}** "
                 f"(slowest median {max(m for _, m, _ in cli):.3f} s). Before the CLI imported torch lazily, "
                 "`cnnlab --help` took 2.1-2.8 s here (2.68 s measured on 2026-12-01), nearly all of it torch's import."]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section("CLI start-up (benchmarks/cli_startup.py)", text)


if __name__ == "__main__":
    main()
