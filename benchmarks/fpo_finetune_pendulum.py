"""
FlowPPO fine-tuning of the foundation's Pendulum FlowBC base (SAC expert 20k steps, 50 noisy demonstration
episodes, FlowBC 5000 gradient steps), several seeds; returns on 50 fixed initial states, the same for the expert,
the base and every checkpoint (a paired comparison).
Targets (FlowPPO issue): close >= 50% of the BC -> expert gap within 100k environment steps, with no checkpoint
worse than BC by more than 20% of BC's return ("no early drop below 80% of BC").

    python -m benchmarks.fpo_finetune_pendulum [--steps 102400] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse

import numpy as np
from stable_baselines3.common.env_util import make_vec_env

from benchmarks.common import evaluate_on_starts, learn_with_curve, mean_std, plot_curves, write_json
from sb3_flow import FlowBC, FlowPPO, collect_demonstrations, set_torch_threads
from sb3_flow.common.experts import train_expert

ENV_ID = "Pendulum-v1"
FINETUNE = {
    "n_steps": 256,
    "batch_size": 256,
    "n_epochs": 10,
    "gamma": 0.9,
    "gae_lambda": 0.95,
    "learning_rate": 3e-5,
    "critic_learning_rate": 1e-3,
    "critic_warmup_rollouts": 3,
    "clip_range": 0.02,
    "n_mc_samples": 8,
    "ratio_mode": "per_sample",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=102_400)
    parser.add_argument("--eval-every", type=int, default=10_240)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmark_output/fpo_finetune_pendulum.json")
    args = parser.parse_args()
    set_torch_threads(1)

    expert = train_expert(ENV_ID, "sac", 20_000, seed=0)
    demos = collect_demonstrations(ENV_ID, expert, 50, action_noise=0.3, seed=0)
    base = FlowBC("MlpPolicy", ENV_ID, demos, learning_rate=1e-3, seed=0, device="cpu").learn(5_000)
    expert_return = evaluate_on_starts(expert, ENV_ID)
    bc_return = evaluate_on_starts(base.policy, ENV_ID)
    print(f"expert {expert_return:.1f}, FlowBC base {bc_return:.1f}", flush=True)

    curves = []
    for seed in args.seeds:
        model = FlowPPO(
            "MlpPolicy", make_vec_env(ENV_ID, n_envs=8, seed=seed), base_policy=base, seed=seed, device="cpu", **FINETUNE
        )
        curve, _ = learn_with_curve(model, args.steps, args.eval_every, ENV_ID)
        curves.append(curve)

    gap = expert_return - bc_return
    finals = [curve[-1][1] for curve in curves]
    closed = [(final - bc_return) / gap for final in finals]
    worst = [min(value for _, value in curve) for curve in curves]
    print(f"\n{ENV_ID}: FlowPPO fine-tuning from FlowBC, {args.steps} steps, seeds {args.seeds}")
    print("| | return on 50 fixed starts | gap closed | worst checkpoint |")
    print("|---|---|---|---|")
    print(f"| SAC expert | {expert_return:.1f} | | |")
    print(f"| FlowBC base | {bc_return:.1f} | 0% | |")
    print(
        f"| FlowPPO fine-tuned (mean ± std over seeds) | {mean_std(finals)} | {100 * np.mean(closed):.0f}% "
        f"(per seed {', '.join(f'{100 * c:.0f}%' for c in closed)}) | {mean_std(worst)} (limit {1.2 * bc_return:.1f}) |"
    )
    plot_curves(
        {"FlowPPO from FlowBC": curves},
        "docs/img/fpo_finetune_pendulum.png",
        "FlowPPO fine-tuning on Pendulum-v1",
        hlines={"expert": expert_return, "FlowBC base": bc_return, "80% of BC": 1.2 * bc_return},
    )
    write_json(
        args.out,
        {
            "args": vars(args),
            "settings": FINETUNE,
            "expert": expert_return,
            "bc": bc_return,
            "curves": curves,
            "gap_closed": closed,
        },
    )


if __name__ == "__main__":
    main()
