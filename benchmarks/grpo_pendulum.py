"""
ReinFlow with group-relative advantages (GRPO: ``advantage="group"``, no critic) against ReinFlow with its critic
(GAE, critic warm-up: ``sb3_flow.experiments.REINFLOW_PENDULUM_FINETUNE``), both fine-tuning the standard Pendulum
FlowBC base (``sb3_flow.experiments.PENDULUM_PIPELINE``) for the same environment-step budget, several seeds; returns
on 50 fixed initial states (a paired comparison), reported at the steps where both curves have a checkpoint, and the
start of each curve (ReinFlow's first rollouts only train its critic; GRPO has none to warm up).

GRPO settings: REINFLOW_PENDULUM_FINETUNE's actor settings (learning rate, clip range, noise, entropy, epochs, K) with
groups of G = 8 envs that share an initial state, 2 groups (16 envs), n_steps = 200 = a Pendulum-v1 episode (its time
limit ends every episode at step 200: no step is masked), 8 minibatches per rollout as ReinFlow's 2048 / 256.

    python -m benchmarks.grpo_pendulum [--steps 102400] [--seeds 0 1 2] [--group-size 8] [--n-groups 2] [--plot]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import (
    curve_parser,
    evaluate_on_starts,
    finetune_curves,
    mean_std,
    plot_curves,
    print_gap_row,
    print_gap_table_head,
    write_json,
)
from sb3_flow import ReinFlow, set_torch_threads
from sb3_flow.experiments import PENDULUM_PIPELINE, REINFLOW_PENDULUM_FINETUNE, pretrained_base

ENV_ID = PENDULUM_PIPELINE.env_id
FINETUNE = REINFLOW_PENDULUM_FINETUNE
EPISODE_STEPS = 200  # Pendulum-v1's time limit
MINIBATCHES_PER_ROLLOUT = FINETUNE["n_steps"] * 8 // FINETUNE["batch_size"]  # ReinFlow's, on its 8 envs

Curves = list[list[tuple[int, float]]]


def grpo_overrides(group_size: int, n_groups: int) -> dict[str, Any]:
    """What GRPO changes in :data:`REINFLOW_PENDULUM_FINETUNE`: groups, one episode per env and rollout, no critic."""
    n_envs = group_size * n_groups
    return {
        "advantage": "group",
        "group_size": group_size,
        "n_envs": n_envs,
        "n_steps": EPISODE_STEPS,
        "batch_size": EPISODE_STEPS * n_envs // MINIBATCHES_PER_ROLLOUT,
        "critic_learning_rate": None,
        "critic_warmup_rollouts": 0,
    }


def returns_at(runs: Curves, step: int) -> list[float]:
    """Each seed's return at the checkpoint taken at ``step`` environment steps."""
    return [dict(run)[step] for run in runs]


def print_shared_checkpoints(curves: dict[str, Curves]) -> None:
    """Returns at the steps where every method has a checkpoint (equal environment steps)."""
    steps = sorted(set.intersection(*({step for step, _ in runs[0]} for runs in curves.values())))
    print("\n| environment steps | " + " | ".join(curves) + " |")
    print("|---" * (len(curves) + 1) + "|")
    for step in steps:
        print(f"| {step} | " + " | ".join(mean_std(returns_at(runs, step)) for runs in curves.values()) + " |")


def print_curve_starts(curves: dict[str, Curves], n_points: int) -> None:
    """The first checkpoints of each curve (steps: mean ± std over seeds)."""
    print("\nStart of the curves (steps: return)")
    for name, runs in curves.items():
        points = [step for step, _ in runs[0]][: n_points + 1]
        print(f"- {name}: " + ", ".join(f"{step}: {mean_std(returns_at(runs, step))}" for step in points))


def main() -> None:
    parser = curve_parser(__doc__, steps=102_400, eval_every=10_240, out="benchmark_output/grpo_pendulum.json")
    parser.add_argument("--group-size", type=int, default=8, help="G: envs (episodes) per initial state")
    parser.add_argument("--n-groups", type=int, default=2, help="groups per rollout (n_envs = G x groups)")
    parser.add_argument("--plot", action="store_true", help="write docs/img/grpo_pendulum.png")
    args = parser.parse_args()
    set_torch_threads(1)

    expert, _, base = pretrained_base(PENDULUM_PIPELINE)
    expert_return = evaluate_on_starts(expert, ENV_ID)
    bc_return = evaluate_on_starts(base.policy, ENV_ID)
    print(f"expert {expert_return:.1f}, FlowBC base {bc_return:.1f} (K=10)", flush=True)

    methods = {
        "ReinFlow + critic (GAE)": {},
        f"ReinFlow + GRPO (G={args.group_size}, {args.n_groups} groups)": grpo_overrides(args.group_size, args.n_groups),
    }
    curves: dict[str, Curves] = {}
    seconds: dict[str, float] = {}
    for name, overrides in methods.items():
        start = time.perf_counter()
        curves[name] = finetune_curves(ReinFlow, ENV_ID, base, FINETUNE, args.seeds, args.steps, args.eval_every, **overrides)
        seconds[name] = time.perf_counter() - start
        print(f"{name}: {seconds[name] / len(args.seeds):.0f} s per seed (training and evaluation)", flush=True)

    print(f"\n{ENV_ID}: ReinFlow fine-tuning from FlowBC, critic vs group advantages, {args.steps} steps, seeds {args.seeds}")
    print_gap_table_head(expert_return, bc_return, base_label="FlowBC base (K=10)")
    closed = {name: print_gap_row(name, runs, expert_return, bc_return) for name, runs in curves.items()}
    print_shared_checkpoints(curves)
    print_curve_starts(curves, n_points=3)
    if args.plot:
        plot_curves(
            curves,
            "docs/img/grpo_pendulum.png",
            "ReinFlow on Pendulum-v1: critic (GAE) vs group advantages (GRPO)",
            hlines={"expert": expert_return, "FlowBC base": bc_return},
        )
    write_json(
        args.out,
        {
            "args": vars(args),
            "settings": {name: {"n_envs": 8, **FINETUNE, **overrides} for name, overrides in methods.items()},
            "expert": expert_return,
            "bc": bc_return,
            "curves": curves,
            "final_steps": {name: [run[-1][0] for run in runs] for name, runs in curves.items()},
            "gap_closed": closed,
            "seconds_per_seed": {name: value / len(args.seeds) for name, value in seconds.items()},
            "final_return_mean": {name: float(np.mean([run[-1][1] for run in runs])) for name, runs in curves.items()},
        },
    )


if __name__ == "__main__":
    main()
