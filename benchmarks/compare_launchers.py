"""
Local worker processes against Ray on the same machine (issue 15): the flagship Pendulum comparison
(``compare_configs/pendulum.yml``) restricted to ``--seeds``, run once with each launcher into its own fresh folder
(the base built by each, as a user's first run would), with the same number of workers. Prints both wall clocks, their
ratio, the overhead per job, and whether every job's curve is identical under both (the launcher must change nothing).

    python -m benchmarks.compare_launchers [--seeds 0] [--methods flow_ppo sac ...] [--workers 2]
        [--out benchmark_output/compare/launchers] [--report]   # --report: the table of the runs already there
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

from benchmarks.common import write_json
from sb3_flow.compare import compare
from sb3_flow.compare.config import load_config
from sb3_flow.compare.jobs import all_jobs, result_path

CONFIG = Path(__file__).resolve().parents[1] / "compare_configs" / "pendulum.yml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", help="a subset of the config's methods (default: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--launchers", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    parser.add_argument("--out", default="benchmark_output/compare/launchers")
    parser.add_argument("--report", action="store_true", help="only print the table of the runs already in --out")
    args = parser.parse_args()
    config = load_config(CONFIG)
    methods = {name: config.methods[name] for name in args.methods or config.methods}
    config = dataclasses.replace(config, seeds=tuple(args.seeds), methods=methods)
    jobs = all_jobs(config)
    if args.report:
        wall = json.loads(Path(args.out, "launchers.json").read_text())["wall_seconds"]
    else:
        wall = {}
        for launcher in args.launchers:
            folder = Path(args.out, launcher)
            shutil.rmtree(folder, ignore_errors=True)  # a fresh run: nothing to resume
            start = time.perf_counter()
            compare(config, folder, launcher=launcher, workers=args.workers)
            wall[launcher] = time.perf_counter() - start
    records = {
        launcher: {str(job): json.loads(result_path(Path(args.out, launcher), job).read_text()) for job in jobs}
        for launcher in args.launchers
    }
    curves = {launcher: {job: record["curve"] for job, record in found.items()} for launcher, found in records.items()}
    identical = all(curves[launcher] == curves[args.launchers[0]] for launcher in args.launchers)
    launchers = " and ".join(args.launchers)
    print(f"\n{len(jobs)} jobs, {args.workers} workers; every curve identical under {launchers}: {identical}")
    # The jobs' own time can differ between the runs (a noisy machine): what the launcher adds is the wall clock beyond
    # the jobs' time shared by the workers.
    print(
        "| launcher | wall clock (s) | ratio to local | the jobs' own time, summed (s) | wall clock beyond the jobs' time / "
        "workers (s) |\n|---|---|---|---|---|"
    )
    for launcher, seconds in wall.items():
        reference = wall.get("local", seconds)
        job_seconds = sum(record["wall_seconds"] for record in records[launcher].values())
        print(
            f"| {launcher} | {seconds:.0f} | {seconds / reference:.2f} | {job_seconds:.0f} | "
            f"{seconds - job_seconds / args.workers:.0f} |"
        )
    if args.report:
        return
    write_json(
        Path(args.out, "launchers.json").as_posix(),
        {"args": vars(args), "jobs": len(jobs), "wall_seconds": wall, "identical_curves": identical},
    )


if __name__ == "__main__":
    main()
