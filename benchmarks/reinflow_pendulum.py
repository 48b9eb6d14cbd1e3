"""
ReinFlow fine-tuning of the foundation's Pendulum FlowBC base (SAC expert 20k steps, 50 noisy demonstration episodes,
FlowBC 5000 gradient steps), learned noise and fixed noise, several seeds; returns on 50 fixed initial states, the
same for the expert, the base and every checkpoint (a paired comparison).
Target (ReinFlow issue): close >= 50% of the BC -> expert gap within 100k environment steps.

    python -m benchmarks.reinflow_pendulum [--steps 102400] [--seeds 0 1 2] [--noise learned fixed]
"""

from __future__ import annotations

import argparse

import numpy as np
from stable_baselines3.common.env_util import make_vec_env

from benchmarks.common import evaluate_on_starts, learn_with_curve, mean_std, plot_curves, write_json
from sb3_flow import FlowBC, ReinFlow, collect_demonstrations, set_torch_threads
from sb3_flow.common.experts import train_expert
from sb3_flow.demo import REINFLOW_PENDULUM_FINETUNE

ENV_ID = "Pendulum-v1"
FINETUNE = REINFLOW_PENDULUM_FINETUNE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=102_400)
    parser.add_argument("--eval-every", type=int, default=10_240)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", nargs="+", default=["learned", "fixed"], choices=["learned", "fixed"])
    parser.add_argument("--out", default="benchmark_output/reinflow_pendulum.json")
    args = parser.parse_args()
    set_torch_threads(1)

    expert = train_expert(ENV_ID, "sac", 20_000, seed=0)
    demos = collect_demonstrations(ENV_ID, expert, 50, action_noise=0.3, seed=0)
    base = FlowBC("MlpPolicy", ENV_ID, demos, learning_rate=1e-3, seed=0, device="cpu").learn(5_000)
    expert_return = evaluate_on_starts(expert, ENV_ID)
    bc_return = evaluate_on_starts(base.policy, ENV_ID)
    # ReinFlow integrates in K = 4 steps (the authors' locomotion setting); the base was trained and is used with 10.
    bc_return_k4 = evaluate_on_starts(
        ReinFlow("MlpPolicy", ENV_ID, base_policy=base, n_flow_steps=FINETUNE["n_flow_steps"], device="cpu"), ENV_ID
    )
    print(f"expert {expert_return:.1f}, FlowBC base {bc_return:.1f} (K=10), {bc_return_k4:.1f} (K=4)", flush=True)

    curves: dict[str, list] = {noise: [] for noise in args.noise}
    for noise in args.noise:
        for seed in args.seeds:
            env = make_vec_env(ENV_ID, n_envs=8, seed=seed)
            model = ReinFlow("MlpPolicy", env, base_policy=base, noise=noise, seed=seed, device="cpu", **FINETUNE)
            curve, _ = learn_with_curve(model, args.steps, args.eval_every, ENV_ID)
            curves[noise].append(curve)

    gap = expert_return - bc_return
    print(f"\n{ENV_ID}: ReinFlow fine-tuning from FlowBC, {args.steps} steps, seeds {args.seeds}")
    print("| | return on 50 fixed starts | gap closed | worst checkpoint |")
    print("|---|---|---|---|")
    print(f"| SAC expert | {expert_return:.1f} | | |")
    print(f"| FlowBC base (K=10) | {bc_return:.1f} | 0% | |")
    print(f"| FlowBC base, integrated with K=4 | {bc_return_k4:.1f} | {100 * (bc_return_k4 - bc_return) / gap:.0f}% | |")
    closed = {}
    for noise, runs in curves.items():
        finals = [curve[-1][1] for curve in runs]
        closed[noise] = [(final - bc_return) / gap for final in finals]
        worst = [min(value for _, value in curve) for curve in runs]
        print(
            f"| ReinFlow, {noise} noise (mean ± std over seeds) | {mean_std(finals)} | {100 * np.mean(closed[noise]):.0f}% "
            f"(per seed {', '.join(f'{100 * c:.0f}%' for c in closed[noise])}) | {mean_std(worst)} |"
        )
    plot_curves(
        {f"ReinFlow, {noise} noise": runs for noise, runs in curves.items()},
        "docs/img/reinflow_pendulum.png",
        "ReinFlow fine-tuning on Pendulum-v1",
        hlines={"expert": expert_return, "FlowBC base": bc_return},
    )
    write_json(
        args.out,
        {
            "args": vars(args),
            "settings": FINETUNE,
            "expert": expert_return,
            "bc": bc_return,
            "bc_k4": bc_return_k4,
            "curves": curves,
            "gap_closed": closed,
        },
    )


if __name__ == "__main__":
    main()
