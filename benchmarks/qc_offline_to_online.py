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
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import curve_parser, mean_std, plot_curves, write_json
from sb3_flow import FQL, collect_demonstrations, set_torch_threads
from sb3_flow.experiments import pendulum_swing_up, returns_on_starts
from sb3_flow.wrappers import ActionChunkWrapper

ENV_ID = "Pendulum-v1"


def curve(model: Any, env_steps: int, eval_every: int, horizon: int) -> tuple[list[tuple[int, float]], float]:
    """Online training with evaluations every ``eval_every`` env steps; returns the curve and the training seconds."""
    wrapper = (lambda env: ActionChunkWrapper(env, horizon, model.gamma)) if horizon > 1 else None
    points = [(0, float(returns_on_starts(model, ENV_ID, env_wrapper=wrapper).mean()))]
    seconds = 0.0
    for done in range(eval_every, env_steps + 1, eval_every):
        start = time.perf_counter()
        model.learn(eval_every // horizon, reset_num_timesteps=False)  # decisions: chunks of `horizon` env steps
        seconds += time.perf_counter() - start
        points.append((done, float(returns_on_starts(model, ENV_ID, env_wrapper=wrapper).mean())))
    return points, seconds


def main() -> None:
    parser = curve_parser(__doc__, steps=5_000, eval_every=1_000, out="benchmark_output/qc_offline_to_online.json")
    parser.add_argument("--offline-steps", type=int, default=5_000)
    parser.add_argument("--horizon", type=int, default=5)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    set_torch_threads(1)
    demos = collect_demonstrations(ENV_ID, pendulum_swing_up, 50, action_noise=0.5, seed=0)
    methods = {"FQL": 1, f"QC-FQL (H = {args.horizon})": args.horizon}
    curves: dict[str, list[list[tuple[int, float]]]] = {name: [] for name in methods}
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    env_steps: dict[str, list[int]] = {name: [] for name in methods}
    for seed in args.seeds:
        for name, horizon in methods.items():
            model = FQL(
                "MlpPolicy", ENV_ID, dataset=demos, alpha=10.0, normalize_q_loss=True, action_horizon=horizon, seed=seed,
                policy_kwargs={"net_arch": [128, 128], "critic_net_arch": [128, 128]}, device="cpu",
            )  # fmt: skip
            start = time.perf_counter()
            model.learn_offline(args.offline_steps)
            offline = time.perf_counter() - start
            points, online = curve(model, args.steps, args.eval_every, horizon)
            curves[name].append(points)
            seconds[name].append(offline + online)
            env_steps[name].append(int(model.env.get_attr("env_steps")[0]) if horizon > 1 else model.num_timesteps)
            print(
                f"{name} seed {seed}: {points[0][1]:.1f} -> {points[-1][1]:.1f} ({env_steps[name][-1]} env steps)", flush=True
            )
    print(
        f"\n| method | offline (start of online) | after {args.steps} env steps | per seed (end) | env steps run | time (s) |"
    )
    print("|---|---|---|---|---|---|")
    for name, runs in curves.items():
        first, last = [run[0][1] for run in runs], [run[-1][1] for run in runs]
        per_seed = ", ".join(f"{value:.1f}" for value in last)
        print(
            f"| {name} | {mean_std(first)} | {mean_std(last)} | {per_seed} | {int(np.mean(env_steps[name]))} | "
            f"{np.mean(seconds[name]):.0f} |"
        )
    if args.plot:
        plot_curves(curves, args.plot, f"{ENV_ID}: FQL vs QC-FQL, {args.offline_steps} offline gradient steps, then online")
    write_json(args.out, {"settings": vars(args), "curves": curves, "seconds": seconds, "env_steps": env_steps})


if __name__ == "__main__":
    main()
