"""Start-up of the `resnets` command: wall time of `--help`, `--version`, a few commands'
`--help`, `models` and `models --table1`, each a fresh interpreter, against `import torch`
measured in the same run.

The commands run in interleaved rounds (one of each per round) and the median round is
reported with its ratio to `import torch`; `--baseline SRC` also times the same commands with
another checkout's `resnets` package (e.g. an unpacked `git archive main`), so before/after
figures come from one run on one (possibly busy) machine. An untimed first round writes each
checkout's bytecode (`__pycache__`, even under PYTHONDONTWRITEBYTECODE), as any installed
package has it: compiling the sources on every start would be timed otherwise. Prints a table
and writes JSON.

    python benchmarks/bench_startup.py [--rounds 5] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "import torch": ["-c", "import torch"],
    "resnets --help": ["-m", "resnets", "--help"],
    "resnets --version": ["-m", "resnets", "--version"],
    "resnets eval --help": ["-m", "resnets", "eval", "--help"],
    "resnets predict --help": ["-m", "resnets", "predict", "--help"],
    "resnets detect train --help": ["-m", "resnets", "detect", "train", "--help"],
    "resnets models": ["-m", "resnets", "models"],
    "resnets models --table1": ["-m", "resnets", "models", "--table1"],
}


def run_once(argv: list[str], source: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if source is not None:
        env["PYTHONPATH"] = source + os.pathsep + env.get("PYTHONPATH", "")
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True, cwd=source or None)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="rounds of every command (default: %(default)s)")
    p.add_argument("--baseline", metavar="DIR", help="another checkout whose resnets package to time too")
    p.add_argument("--out", default="benchmarks/results/startup.json", help="where the JSON goes")
    args = p.parse_args()

    variants = {"this": None, **({"baseline": str(Path(args.baseline).resolve())} if args.baseline else {})}
    times: dict[tuple[str, str], list[float]] = {}
    for source in variants.values():  # warm-up: bytecode written, files in the page cache
        for argv in COMMANDS.values():
            run_once(argv, source)
    for _ in range(args.rounds):
        for variant, source in variants.items():
            for name, argv in COMMANDS.items():
                if name == "import torch" and variant != "this":
                    continue
                times.setdefault((variant, name), []).append(run_once(argv, source))
    torch_s = statistics.median(times[("this", "import torch")])
    rows = [{"variant": v, "command": n, "median_s": statistics.median(t), "min_s": min(t),
             "vs_import_torch": statistics.median(t) / torch_s} for (v, n), t in times.items()]
    print(f"{'variant':<10}{'command':<30}{'median s':>10}{'min s':>8}{'/ import torch':>16}")
    for r in rows:
        print(f"{r['variant']:<10}{r['command']:<30}{r['median_s']:>10.2f}{r['min_s']:>8.2f}{r['vs_import_torch']:>16.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "startup", "rounds": args.rounds, "python": platform.python_version(),
                               "load_average": os.getloadavg(), "rows": rows}, indent=1))
    print(f"wrote {out} (load average {os.getloadavg()[0]:.1f}: a busy machine stretches every row alike)")


if __name__ == "__main__":
    main()
