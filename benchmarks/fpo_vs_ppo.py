"""
FlowPPO vs SB3 PPO from scratch, same environment steps, several seeds, steps/s measured in the same run.

Both use 8 environments and the same rollout / minibatch / epoch / learning-rate / network settings; PPO keeps its own
clip range 0.2 (and on Pendulum the Zoo's gSDE exploration), FlowPPO FPO's 0.05 with N = 8 draws and K = 10 steps.
Returns are deterministic, on 50 fixed initial states (paired across methods).
Targets (FlowPPO issue): final return within 10% of PPO's; steps/s >= 0.8x PPO's.

    python -m benchmarks.fpo_vs_ppo --env Pendulum-v1 --steps 100000
    python -m benchmarks.fpo_vs_ppo --env Hopper-v5 --steps 200000
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from benchmarks.common import learn_with_curve, mean_std, plot_curves, write_json
from sb3_flow import FlowPPO, set_torch_threads

SETTINGS: dict[str, dict[str, Any]] = {
    "Pendulum-v1": {
        "normalize": False,
        "shared": {"n_steps": 256, "batch_size": 256, "n_epochs": 10, "learning_rate": 1e-3, "gamma": 0.9, "gae_lambda": 0.95},
        "arch": [64, 64],
        "ppo": {"clip_range": 0.2, "use_sde": True, "sde_sample_freq": 4},
    },
    "Hopper-v5": {
        "normalize": True,
        "shared": {
            "n_steps": 256,
            "batch_size": 256,
            "n_epochs": 10,
            "learning_rate": 3e-4,
            "gamma": 0.99,
            "gae_lambda": 0.95,
        },
        "arch": [256, 256],
        "ppo": {"clip_range": 0.2},
    },
}


def make_model(name: str, env_id: str, seed: int) -> Any:
    settings = SETTINGS[env_id]
    env = make_vec_env(env_id, n_envs=8, seed=seed)
    if settings["normalize"]:
        env = VecNormalize(env)
    arch = settings["arch"]
    if name == "PPO":
        return PPO(
            "MlpPolicy", env, seed=seed, device="cpu", **settings["shared"], **settings["ppo"],
            policy_kwargs={"net_arch": {"pi": arch, "vf": arch}},
        )  # fmt: skip
    return FlowPPO(
        "MlpPolicy", env, seed=seed, device="cpu", **settings["shared"], clip_range=0.05, n_mc_samples=8, n_flow_steps=10,
        policy_kwargs={"net_arch": arch, "value_net_arch": arch},
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1", choices=sorted(SETTINGS))
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=20_480)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    set_torch_threads(1)

    curves: dict[str, list] = {"PPO": [], "FlowPPO": []}
    speeds: dict[str, list[float]] = {"PPO": [], "FlowPPO": []}
    for seed in args.seeds:
        for name in ("PPO", "FlowPPO"):
            print(f"{name} seed {seed}", flush=True)
            model = make_model(name, args.env, seed)
            curve, seconds = learn_with_curve(model, args.steps, args.eval_every, args.env)
            curves[name].append(curve)
            speeds[name].append(model.num_timesteps / seconds)

    print(f"\n{args.env}, {args.steps} steps, seeds {args.seeds}")
    print("| method | final return (mean ± std over seeds) | per seed | train steps/s | steps/s vs PPO |")
    print("|---|---|---|---|---|")
    ratios = np.array(speeds["FlowPPO"]) / np.array(speeds["PPO"])
    for name in ("PPO", "FlowPPO"):
        finals = [curve[-1][1] for curve in curves[name]]
        ratio = "1.00" if name == "PPO" else f"{ratios.mean():.2f} ± {ratios.std():.2f}"
        per_seed = ", ".join(f"{value:.1f}" for value in finals)
        print(f"| {name} | {mean_std(finals)} | {per_seed} | {np.mean(speeds[name]):.0f} | {ratio} |")
    stem = args.env.split("-")[0].lower()
    plot_curves(curves, f"docs/img/fpo_vs_ppo_{stem}.png", f"FlowPPO vs PPO from scratch on {args.env}")
    write_json(
        args.out or f"benchmark_output/fpo_vs_ppo_{stem}.json", {"args": vars(args), "curves": curves, "steps_per_s": speeds}
    )


if __name__ == "__main__":
    main()
