"""
Q-chunking on Pendulum-v1 (issue 14): FQL over chunks of H = 5 actions (QC-FQL: ``FQL(..., action_horizon=5)``)
against FQL over single actions, both pretrained offline on the same dataset, then trained online on the same replay
buffer for the same number of **environment** steps.

Dataset: the scripted swing-up controller with action noise 0.5, 50 episodes, seed 0 (``benchmarks.offline_rl``'s).
Both: 128-128 networks, batch 256, learning rate 3e-4, ``alpha=10`` with ``normalize_q_loss`` (the Pendulum FQL
setting; not tuned for QC), ``--offline-steps`` gradient steps, then ``--steps`` environment steps online with one
gradient step per decision (FQL: per env step; QC-FQL: per chunk of 5 env steps). Evaluation: deterministic return on
the 50 fixed starts every ``--eval-every`` env steps (QC-FQL's chunks executed open-loop through ``ActionChunkWrapper``,
the returns the environment's own).

    python -m benchmarks.qc_offline_to_online [--steps 5000] [--offline-steps 5000] [--seeds 0 1 2] [--plot PNG]

``--task cube-single``: OGBench cube-single task 2 with ``benchmarks.offline_rl``'s datasets (``--cube-data play``:
``--episodes`` play episodes; ``mixed``: plus ``--task-episodes`` task-directed oracle episodes), the authors' alpha
per method (FQL 300 without Q normalization, FQL README; QC-FQL 100, QC's acfql.py), 256-256 networks, success rate
(%) over 50 evaluation episodes with fixed seeds (the chunked policy evaluated through ``ActionChunkWrapper``).

    python -m benchmarks.qc_offline_to_online --task cube-single --cube-data mixed --episodes 10 --task-episodes 50 \
        --offline-steps 10000 --steps 10000 --eval-every 2500 --methods FQL --out benchmark_output/qc_cube_FQL.json
    (the same with ``--methods QC-FQL --out benchmark_output/qc_cube_QC-FQL.json``, in a second process), then
    python -m benchmarks.qc_offline_to_online --report benchmark_output/qc_cube_FQL.json \
        benchmark_output/qc_cube_QC-FQL.json --plot docs/img/qc_offline_to_online_cube.png
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import curve_parser, mean_std, plot_curves, write_json
from benchmarks.offline_rl import CUBE_TASK, cube_dataset
from sb3_flow import FQL, collect_demonstrations, set_torch_threads
from sb3_flow.common.ogbench import make_ogbench_env, ogbench_success_rate
from sb3_flow.experiments import pendulum_swing_up, returns_on_starts
from sb3_flow.wrappers import ActionChunkWrapper

ENV_ID = "Pendulum-v1"
# Per task and method (horizon 1: FQL; > 1: QC-FQL): alpha and Q-loss normalization.
SETTINGS: dict[str, dict[bool, dict[str, Any]]] = {
    "pendulum": {False: {"alpha": 10.0, "normalize_q_loss": True}, True: {"alpha": 10.0, "normalize_q_loss": True}},
    "cube-single": {False: {"alpha": 300.0, "normalize_q_loss": False}, True: {"alpha": 100.0, "normalize_q_loss": False}},
}
HIDDEN = {"pendulum": [128, 128], "cube-single": [256, 256]}


def evaluate(model: Any, task: str, horizon: int) -> float:
    """Pendulum: mean return on the 50 fixed starts; cube-single: success rate (%) on 50 fixed episodes."""
    wrapper = (lambda env: ActionChunkWrapper(env, horizon, model.gamma)) if horizon > 1 else None
    if task == "pendulum":
        return float(returns_on_starts(model, ENV_ID, env_wrapper=wrapper).mean())
    return 100.0 * ogbench_success_rate(model, CUBE_TASK, n_episodes=50, seed=1000, env_wrapper=wrapper)


def curve(model: Any, task: str, env_steps: int, eval_every: int, horizon: int) -> tuple[list[tuple[int, float]], float]:
    """Online training with evaluations every ``eval_every`` env steps; returns the curve and the training seconds."""
    points = [(0, evaluate(model, task, horizon))]
    seconds = 0.0
    for done in range(eval_every, env_steps + 1, eval_every):
        start = time.perf_counter()
        model.learn(eval_every // horizon, reset_num_timesteps=False)  # decisions: chunks of `horizon` env steps
        seconds += time.perf_counter() - start
        points.append((done, evaluate(model, task, horizon)))
        print(f"  H={horizon} {done}: {points[-1][1]:.1f}", flush=True)
    return points, seconds


def main() -> None:
    parser = curve_parser(__doc__, steps=5_000, eval_every=1_000, out="benchmark_output/qc_offline_to_online.json")
    parser.add_argument("--offline-steps", type=int, default=5_000)
    parser.add_argument("--horizon", type=int, default=5)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--task", choices=("pendulum", "cube-single"), default="pendulum")
    parser.add_argument("--cube-data", choices=("play", "mixed"), default="mixed")
    parser.add_argument("--episodes", type=int, default=10, help="cube-single play episodes")
    parser.add_argument("--task-episodes", type=int, default=50, help="cube-single task-directed episodes (mixed)")
    parser.add_argument("--cache", default="benchmark_output/datasets", help="folder of generated datasets")
    parser.add_argument("--methods", nargs="+", default=["FQL", "QC-FQL"], choices=["FQL", "QC-FQL"])
    parser.add_argument("--report", nargs="+", metavar="FILE", help="only merge and print these JSON outputs")
    args = parser.parse_args()
    if args.report:
        report([json.loads(Path(path).read_text()) for path in args.report], args.plot)
        return
    set_torch_threads(1)
    if args.task == "pendulum":
        demos = collect_demonstrations(ENV_ID, pendulum_swing_up, 50, action_noise=0.5, seed=0)
    else:
        demos = cube_dataset(args.cache, args.episodes, args.task_episodes if args.cube_data == "mixed" else 0)
    methods = {name: horizon for name, horizon in {"FQL": 1, f"QC-FQL (H = {args.horizon})": args.horizon}.items()
               if name.split(" ")[0] in args.methods}  # fmt: skip
    curves: dict[str, list[list[tuple[int, float]]]] = {name: [] for name in methods}
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    env_steps: dict[str, list[int]] = {name: [] for name in methods}
    for seed in args.seeds:
        for name, horizon in methods.items():
            env = ENV_ID if args.task == "pendulum" else make_ogbench_env(CUBE_TASK)
            hidden = HIDDEN[args.task]
            model = FQL(
                "MlpPolicy", env, dataset=demos, action_horizon=horizon, seed=seed, device="cpu",
                policy_kwargs={"net_arch": hidden, "critic_net_arch": hidden}, **SETTINGS[args.task][horizon > 1],
            )  # fmt: skip
            start = time.perf_counter()
            model.learn_offline(args.offline_steps)
            offline = time.perf_counter() - start
            points, online = curve(model, args.task, args.steps, args.eval_every, horizon)
            curves[name].append(points)
            seconds[name].append(offline + online)
            env_steps[name].append(int(model.env.get_attr("env_steps")[0]) if horizon > 1 else model.num_timesteps)
            print(
                f"{name} seed {seed}: {points[0][1]:.1f} -> {points[-1][1]:.1f} ({env_steps[name][-1]} env steps)", flush=True
            )
    payload = {"settings": vars(args), "curves": curves, "seconds": seconds, "env_steps": env_steps}
    write_json(args.out, payload)
    report([payload], args.plot)


def report(payloads: list[dict[str, Any]], plot: str | None) -> None:
    """Merge runs (one or more JSON outputs with the same settings but seeds or methods) into one table and plot."""
    settings = payloads[0]["settings"]
    curves: dict[str, list] = {}
    seconds: dict[str, list] = {}
    env_steps: dict[str, list] = {}
    for payload in payloads:
        for name in payload["curves"]:
            curves.setdefault(name, []).extend(payload["curves"][name])
            seconds.setdefault(name, []).extend(payload["seconds"][name])
            env_steps.setdefault(name, []).extend(payload["env_steps"][name])
    print(
        f"\n| method | offline (start of online) | after {settings['steps']} env steps | per seed (end) | env steps run | "
        "time (s) |"
    )
    print("|---|---|---|---|---|---|")
    for name, runs in curves.items():
        first, last = [run[0][1] for run in runs], [run[-1][1] for run in runs]
        per_seed = ", ".join(f"{value:.1f}" for value in last)
        print(
            f"| {name} | {mean_std(first)} | {mean_std(last)} | {per_seed} | {int(np.mean(env_steps[name]))} | "
            f"{np.mean(seconds[name]):.0f} |"
        )
    if plot:
        task = settings.get("task", "pendulum")
        task_name = ENV_ID if task == "pendulum" else "cube-single task 2"
        ylabel = "return on fixed starts" if task == "pendulum" else "success rate (%), 50 fixed episodes"
        title = f"{task_name}: FQL vs QC-FQL online, after {settings['offline_steps']} offline steps"
        plot_curves(curves, plot, title, ylabel=ylabel)


if __name__ == "__main__":
    main()
