"""
The comparison where the base matters (issue 15): OGBench cube-single task 2, sparse reward, every method that starts
from a FlowBC base beside SAC and PPO from scratch, through ``sb3-flow compare`` with ``compare_configs/cube_single.yml``.
This script only makes the config's dataset when it is missing (``benchmarks.offline_rl.cube_dataset``: 10 play
episodes of OGBench's scripted oracle + 50 task-directed oracle episodes, seed 0; needs the ``[ogbench]`` extra), runs
the comparison, and prints each method's success rate, which the report's returns imply (an episode succeeds when it
ends before its 200 steps: return > -200), from the same job files.

    python -m benchmarks.compare_cube [--out benchmark_output/compare/cube_single] [--workers 2] [--launcher ray]
    python -m benchmarks.compare_cube --report     # the success table of the jobs finished so far
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.offline_rl import cube_dataset
from sb3_flow.compare import compare
from sb3_flow.compare.base import read_json
from sb3_flow.compare.config import import_yaml, load_config
from sb3_flow.compare.reporting import collect_runs, read_sweep

CONFIG = Path(__file__).resolve().parents[1] / "compare_configs" / "cube_single.yml"
FAILED_RETURN = -200.0  # -1 on each of the 200 steps: the cube never reached the goal


def make_dataset(path: Path) -> None:
    """The mixed cube-single dataset of the FQL / Q-chunking benchmarks, saved where the config reads it."""
    if path.is_file():
        return
    demos = cube_dataset(str(path.parent), play_episodes=10, task_episodes=50)
    print(demos.summary(), flush=True)
    demos.save(path)


def success_rates(out_dir: Path) -> None:
    """
    Per method: the success rate (%) on the fixed starts at the end, mean and per seed, the base's beside; from the job
    files the compare report reads (those written with the sweep's settings), so a reused folder mixes no other run.
    """
    references = read_json(out_dir / "base" / "references.json")["references"]
    base = 100 * np.mean(np.array(references["base_returns"]) > FAILED_RETURN)
    print("\n| method | success rate at the end (%), mean over seeds | per seed |\n|---|---|---|")
    print(f"| FlowBC base | {base:.0f} | |")
    for method, found in collect_runs(out_dir, read_sweep(out_dir)).items():
        rates = [100 * np.mean(np.array(record["final_returns"]) > FAILED_RETURN) for record in found.records]
        if rates:
            print(f"| {method} | {np.mean(rates):.0f} | {', '.join(f'{rate:.0f}' for rate in rates)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmark_output/compare/cube_single")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--launcher", choices=("local", "ray"), default="local")
    parser.add_argument("--report", action="store_true", help="only print the success table of the jobs finished so far")
    args = parser.parse_args()
    # The dataset must exist before the config is read (the config check looks for it): its path is the config's.
    dataset = import_yaml().safe_load(CONFIG.read_text(encoding="utf-8"))["base"]["dataset"]
    make_dataset((CONFIG.parent / dataset).resolve())
    config = load_config(CONFIG)
    if not args.report:
        compare(config, args.out, launcher=args.launcher, workers=args.workers)
    success_rates(Path(args.out))


if __name__ == "__main__":
    main()
