"""
Wall clock of a chunked rollout (issue 14): a flow policy that emits H actions per call is called once per H
environment steps. Environment steps per second of a FlowBC policy acting on Pendulum-v1 with H = 1 (one call per
step) against the same policy shape with H = 5 on ``ActionChunkWrapper(env, 5)`` (one call per 5 steps), in one
process, alternating chunks of ``--env-steps`` steps, ``--repeats`` times; the ratio is the median of per-repeat
ratios. Target: >= 3x at H = 5. The policies' weights are untrained (the cost does not depend on them); K = 10,
256-256-256 networks (FlowPolicy's default), ``predict`` at batch 1, as a robot's control loop calls it.

    python -m benchmarks.chunk_speed [--repeats 7] [--env-steps 2000] [--horizon 5]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import gymnasium as gym
import numpy as np

from benchmarks.common import write_json
from sb3_flow import FlowBC, set_torch_threads
from sb3_flow.wrappers import ActionChunkWrapper


def env_steps_per_second(policy: Any, env: gym.Env, env_steps: int) -> float:
    obs, _ = env.reset(seed=0)
    steps, start = 0, time.perf_counter()
    while steps < env_steps:
        action, _ = policy.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action)
        steps += info.get("chunk_steps", 1)
        if terminated or truncated:
            obs, _ = env.reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--env-steps", type=int, default=2000)
    parser.add_argument("--horizon", type=int, default=5)
    parser.add_argument("--out", default="benchmark_output/chunk_speed.json")
    args = parser.parse_args()
    set_torch_threads(1)
    envs = {1: gym.make("Pendulum-v1"), args.horizon: ActionChunkWrapper(gym.make("Pendulum-v1"), args.horizon)}
    policies = {horizon: FlowBC("MlpPolicy", env, seed=0, device="cpu").policy for horizon, env in envs.items()}
    speeds: dict[int, list[float]] = {horizon: [] for horizon in envs}
    for horizon in envs:  # warm-up
        env_steps_per_second(policies[horizon], envs[horizon], 50)
    for _ in range(args.repeats):
        for horizon, env in envs.items():
            speeds[horizon].append(env_steps_per_second(policies[horizon], env, args.env_steps))
    ratios = np.array(speeds[args.horizon]) / np.array(speeds[1])
    print("\n| H | env steps/s (median) | ratio to H = 1 (median of per-repeat ratios) | range |")
    print("|---|---|---|---|")
    for horizon, values in speeds.items():
        horizon_ratios = np.array(values) / np.array(speeds[1])
        spread = f"{horizon_ratios.min():.2f}-{horizon_ratios.max():.2f}"
        print(f"| {horizon} | {np.median(values):.0f} | {np.median(horizon_ratios):.2f}x | {spread} |")
    print(f"\nH = {args.horizon} / H = 1: {np.median(ratios):.2f}x (target >= 3x)")
    write_json(args.out, {"settings": vars(args), "env_steps_per_second": {str(k): v for k, v in speeds.items()}})


if __name__ == "__main__":
    main()
