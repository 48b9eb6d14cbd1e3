"""
What switching oneDNN off for small-batch inference (``FlowPolicy.inference_kernels``: ``predict`` and rollout steps
under 64 rows) buys the on-policy algorithms: FlowPPO (Pendulum settings of ``benchmarks/fpo_vs_ppo.py``: 64-64 actor,
GELU, K = 10, N = 8) and ReinFlow (FlowBC-default 256-256-256 GELU actor, K = 4), each with the switch and with it
disabled, beside SB3 PPO (64-64 tanh), in one process, n_envs = 8, as steps/s ratios to PPO.

    python -m benchmarks.onednn_small_batch [--steps 4096] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib

from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from benchmarks.common import print_speed_ratios, steps_per_second, write_json
from sb3_flow import FlowPPO, ReinFlow, set_torch_threads
from sb3_flow.policies.flow_policy import FlowPolicy

SHARED = {"n_steps": 256, "batch_size": 256, "n_epochs": 10, "learning_rate": 1e-3, "gamma": 0.9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmark_output/onednn_small_batch.json")
    args = parser.parse_args()
    set_torch_threads(1)
    switch = FlowPolicy.inference_kernels
    speeds: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        env = lambda seed=repeat: make_vec_env("Pendulum-v1", n_envs=8, seed=seed)  # noqa: E731
        speeds.setdefault("PPO", []).append(
            steps_per_second(PPO("MlpPolicy", env(), seed=repeat, device="cpu", **SHARED), args.steps)
        )
        for mode in ("oneDNN everywhere", "native kernels for small batches"):
            FlowPolicy.inference_kernels = (
                switch if mode.startswith("native") else (lambda self, obs: contextlib.nullcontext())
            )
            flow_ppo = FlowPPO(
                "MlpPolicy", env(), seed=repeat, device="cpu", clip_range=0.05, n_mc_samples=8, n_flow_steps=10,
                policy_kwargs={"net_arch": [64, 64], "value_net_arch": [64, 64]}, **SHARED,
            )  # fmt: skip
            speeds.setdefault(f"FlowPPO, {mode}", []).append(steps_per_second(flow_ppo, args.steps))
            reinflow = ReinFlow(
                "MlpPolicy", env(), n_flow_steps=4, seed=repeat, device="cpu", n_steps=256, batch_size=256, n_epochs=5
            )
            speeds.setdefault(f"ReinFlow, {mode}", []).append(steps_per_second(reinflow, args.steps))
        FlowPolicy.inference_kernels = switch
        print(repeat, {name: round(values[-1]) for name, values in speeds.items()}, flush=True)
    print_speed_ratios(speeds, "PPO")
    write_json(args.out, {"args": vars(args), "steps_per_s": speeds})


if __name__ == "__main__":
    main()
