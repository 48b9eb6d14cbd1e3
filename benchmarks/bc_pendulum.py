"""
FlowBC (and the Gaussian BC baseline) on Pendulum-v1 from noisy-expert demonstrations.

Pipeline: an SB3 SAC expert (20k steps, cached), 50 demonstration episodes with action noise 0.3, then FlowBC and
GaussianBC for several seeds; each evaluated deterministically (a) on the demonstrations' own 50 initial states, a
paired comparison (Pendulum's return depends on the start state far more than on the policy), and (b) on 50 fresh
episodes.
Target (foundation issue): FlowBC within 15% of the demonstrations' mean return.

    python -m benchmarks.bc_pendulum [--seeds 0 1 2] [--bc-steps 5000] [--eval-episodes 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch as th

from benchmarks.common import write_json
from sb3_flow import FlowBC, GaussianBC, collect_demonstrations, set_torch_threads
from sb3_flow.experiments import PENDULUM_PIPELINE, evaluate_episodes, pretrain, returns_on_starts, train_expert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=PENDULUM_PIPELINE.env_id)
    parser.add_argument("--expert-steps", type=int, default=PENDULUM_PIPELINE.expert_steps)
    parser.add_argument("--episodes", type=int, default=PENDULUM_PIPELINE.n_episodes)
    parser.add_argument("--action-noise", type=float, default=PENDULUM_PIPELINE.action_noise)
    parser.add_argument("--bc-steps", type=int, default=PENDULUM_PIPELINE.bc_steps)
    parser.add_argument("--learning-rate", type=float, default=PENDULUM_PIPELINE.bc_learning_rate)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmark_output/bc_pendulum.json")
    args = parser.parse_args()
    set_torch_threads(1)

    start = time.perf_counter()
    expert = train_expert(args.env, "sac", args.expert_steps, seed=0, progress_bar=False)
    expert_seconds = time.perf_counter() - start
    expert_mean, expert_std = evaluate_episodes(expert, args.env, args.eval_episodes, seed=10_000)
    demos = collect_demonstrations(args.env, expert, args.episodes, args.action_noise, seed=0)
    demo = demos.summary()
    print(f"expert {expert_mean:.1f} ± {expert_std:.1f} ({expert_seconds:.0f} s incl. training or cache load)")
    print(f"demonstrations {demo['mean_return']:.1f} ± {demo['std_return']:.1f} ({demo['n_episodes']} episodes)")

    results: dict[str, list[dict[str, float]]] = {"FlowBC": [], "GaussianBC": []}
    for seed in args.seeds:
        for name, algorithm in (("FlowBC", FlowBC), ("GaussianBC", GaussianBC)):
            th.manual_seed(seed)
            start = time.perf_counter()
            model = pretrain(algorithm, args.env, demos, args.bc_steps, args.learning_rate, seed)
            train_seconds = time.perf_counter() - start
            paired = returns_on_starts(model.policy, args.env, args.episodes)  # the demonstrations' starts (seeds 0..)
            mean, std = evaluate_episodes(model.policy, args.env, args.eval_episodes, seed=20_000 + seed)
            results[name].append(
                {
                    "seed": seed,
                    "paired_mean_return": float(paired.mean()),
                    "mean_return": mean,
                    "std_return": std,
                    "train_seconds": train_seconds,
                }
            )
            print(
                f"{name} seed {seed}: {paired.mean():.1f} on the demonstrations' starts, {mean:.1f} ± {std:.1f} on fresh "
                f"episodes ({train_seconds:.0f} s training)",
                flush=True,
            )

    print(
        "\n| method | return on the demonstrations' 50 starts, mean ± std over seeds | vs demonstrations "
        "| return on 50 fresh episodes, mean ± std over seeds | train s |"
    )
    print("|---|---|---|---|---|")
    print(f"| SAC expert ({args.expert_steps} steps) | | | {expert_mean:.1f} ± {expert_std:.1f} (over episodes) | |")
    print(f"| demonstrations (noise {args.action_noise}) | {demo['mean_return']:.1f} | 1.00 | | |")
    for name, runs in results.items():
        paired = np.array([run["paired_mean_return"] for run in runs])
        fresh = np.array([run["mean_return"] for run in runs])
        seconds = np.mean([run["train_seconds"] for run in runs])
        ratio = paired.mean() / demo["mean_return"]
        print(
            f"| {name} | {paired.mean():.1f} ± {paired.std():.1f} | {ratio:.2f} | {fresh.mean():.1f} ± {fresh.std():.1f} "
            f"| {seconds:.0f} |"
        )

    write_json(
        args.out,
        {
            "args": vars(args),
            "expert": {"mean_return": expert_mean, "std_return": expert_std},
            "demonstrations": demo,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
