"""
Per-action sampling latency of FlowPolicy for K in {1, 2, 4, 10} at batch 1 and 256, beside SB3's Gaussian
``predict`` and beside K bare forward passes of the same MLP (the floor any K-step sampler pays).

Target (foundation issue): the sampler costs <= 1.3x the K bare passes.

    python -m benchmarks.sampling_latency [--repeats 200] [--out benchmark_output/sampling_latency.json]
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import PPO
from torch import nn

from benchmarks.common import write_json
from sb3_flow import FlowPolicy, set_torch_threads


def paired_timings_us(fns: dict[str, Callable[[], object]], repeats: int, rounds: int = 10) -> dict[str, float]:
    """
    Wall time of each function in microseconds: the functions take turns in ``rounds`` rounds, each round's median is
    taken, and the fastest round counts, so that the slow spells of a shared virtual machine drop out.
    """
    round_medians: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(10):
            fn()
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            samples = []
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - start)
            round_medians[name].append(float(np.median(samples)))
    return {name: min(medians) * 1e6 for name, medians in round_medians.items()}


def bare_mlp_like(policy: FlowPolicy, obs_dim: int) -> tuple[nn.Module, int]:
    """The same layer sizes as the policy's velocity network, on one pre-concatenated [obs, x, time-embedding] input."""
    arch = policy.net_arch
    input_dim = obs_dim + policy.action_dim + policy.time_embedding_dim
    layers: list[nn.Module] = [nn.Linear(input_dim, arch[0]), policy.activation_fn()]
    for in_size, out_size in itertools.pairwise(arch):
        layers += [nn.Linear(in_size, out_size), policy.activation_fn()]
    layers.append(nn.Linear(arch[-1], policy.action_dim))
    return nn.Sequential(*layers), input_dim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default="benchmark_output/sampling_latency.json")
    args = parser.parse_args()
    set_torch_threads(1)
    th.manual_seed(0)

    env = gym.make(args.env)
    obs_dim = int(np.prod(env.observation_space.shape))
    policy = FlowPolicy(env.observation_space, env.action_space, lambda _: 1e-3).eval()
    gaussian = PPO("MlpPolicy", env, policy_kwargs={"net_arch": policy.net_arch}, device="cpu").policy.eval()
    mlp, input_dim = bare_mlp_like(policy, obs_dim)

    rows = []
    with th.no_grad():
        for batch in (1, 256):
            obs_np = np.random.default_rng(0).normal(size=(batch, obs_dim)).astype(np.float32)
            obs = th.as_tensor(obs_np)
            bare_input = th.randn(batch, input_dim)
            for n_steps in (1, 2, 4, 10):
                policy.n_flow_steps = n_steps

                def bare_passes(bare_input=bare_input, n_steps=n_steps) -> None:
                    for _ in range(n_steps):
                        mlp(bare_input)

                timings = paired_timings_us(
                    {
                        "sampler": lambda obs=obs: policy.sample(obs),
                        "bare": bare_passes,
                        "flow_predict": lambda obs_np=obs_np: policy.predict(obs_np),
                        "gaussian_predict": lambda obs_np=obs_np: gaussian.predict(obs_np, deterministic=True),
                    },
                    args.repeats,
                )
                rows.append(
                    {
                        "batch": batch,
                        "K": n_steps,
                        "sampler_us": timings["sampler"],
                        "flow_predict_us": timings["flow_predict"],
                        "bare_k_passes_us": timings["bare"],
                        "gaussian_predict_us": timings["gaussian_predict"],
                        "sampler_over_bare": timings["sampler"] / timings["bare"],
                    }
                )

    header = (
        "| batch | K | sampler (µs) | K bare passes (µs) | sampler / bare | FlowPolicy.predict (µs) "
        "| SB3 Gaussian predict (µs) |"
    )
    print(header)
    print("|" + "---|" * 7)
    for row in rows:
        print(
            f"| {row['batch']} | {row['K']} | {row['sampler_us']:.0f} | {row['bare_k_passes_us']:.0f} | "
            f"{row['sampler_over_bare']:.2f} | {row['flow_predict_us']:.0f} | {row['gaussian_predict_us']:.0f} |"
        )
    write_json(args.out, {"env": args.env, "net_arch": policy.net_arch, "rows": rows})


if __name__ == "__main__":
    main()
