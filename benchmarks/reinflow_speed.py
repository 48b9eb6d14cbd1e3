"""
ReinFlow vs SB3 PPO training throughput (environment steps per second, rollouts and updates included), measured in
one process, alternating the two, n_envs = 8, K = 4, the same rollout / minibatch / epoch settings. Two actor sizes:
the FlowBC default (256-256-256 GELU, what a fine-tuned base has) and PPO's own (64-64 tanh).
Target (ReinFlow issue): >= 0.8x PPO's steps/s.

    python -m benchmarks.reinflow_speed [--envs Pendulum-v1 Hopper-v5] [--steps 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse

from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

from benchmarks.common import print_speed_ratios, steps_per_second, write_json
from sb3_flow import ReinFlow, set_torch_threads

SHARED = {"n_steps": 256, "batch_size": 256, "n_epochs": 5}
ACTORS = {
    "256-256-256 GELU": {"net_arch": [256, 256, 256], "activation_fn": nn.GELU},
    "64-64 tanh": {"net_arch": [64, 64], "activation_fn": nn.Tanh, "value_net_arch": [64, 64]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["Pendulum-v1", "Hopper-v5"])
    parser.add_argument("--steps", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmark_output/reinflow_speed.json")
    args = parser.parse_args()
    set_torch_threads(1)

    results: dict[str, dict[str, list[float]]] = {}
    for env_id in args.envs:
        speeds: dict[str, list[float]] = {"PPO": [], **{f"ReinFlow {name}": [] for name in ACTORS}}
        for repeat in range(args.repeats):
            ppo = PPO("MlpPolicy", make_vec_env(env_id, n_envs=8, seed=repeat), seed=repeat, device="cpu", **SHARED)
            speeds["PPO"].append(steps_per_second(ppo, args.steps))
            for name, policy_kwargs in ACTORS.items():
                model = ReinFlow(
                    "MlpPolicy", make_vec_env(env_id, n_envs=8, seed=repeat), n_flow_steps=4, seed=repeat, device="cpu",
                    policy_kwargs=policy_kwargs, **SHARED,
                )  # fmt: skip
                speeds[f"ReinFlow {name}"].append(steps_per_second(model, args.steps))
            print(env_id, repeat, {key: round(values[-1]) for key, values in speeds.items()}, flush=True)
        results[env_id] = speeds

    for env_id, speeds in results.items():
        print_speed_ratios(speeds, "PPO", label="env | method", prefix=f"| {env_id} ")
    write_json(args.out, {"args": vars(args), "settings": SHARED, "steps_per_s": results})


if __name__ == "__main__":
    main()
