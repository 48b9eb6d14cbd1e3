"""
Per-action sampling latency of FlowPolicy for K in {1, 2, 4, 10} at batch 1 and 256, eager and compiled
(``FlowPolicy.compile_sampler()``), beside SB3's Gaussian ``predict`` and beside K bare forward passes of the same MLP
(the floor any eager K-step sampler pays).

Targets (issue 16): ``FlowPolicy.predict`` at K = 10, batch 1 <= 1.5x SB3's Gaussian ``predict`` of the same hidden
sizes; at batch 256 the sampler <= 1.1x the K bare passes. Compile time per graph and the break-even number of calls
(compile time / time saved per call) are reported.

    python -m benchmarks.sampling_latency [--repeats 200] [--out benchmark_output/sampling_latency.json]
"""

from __future__ import annotations

import argparse
import copy
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


def paired_timings_us(
    fns: dict[str, Callable[[], object]], repeats: int, rounds: int = 10, spread: dict[str, list[float]] | None = None
) -> dict[str, float]:
    """
    Wall time of each function in microseconds: the functions take turns in ``rounds`` rounds, each round's median is
    taken, and the fastest round counts, so that the slow spells of a shared virtual machine drop out.

    :param spread: when given, receives every round's median per function (microseconds), for a range
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
    if spread is not None:
        spread.update({name: [value * 1e6 for value in medians] for name, medians in round_medians.items()})
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


def compile_graph(policy: FlowPolicy, obs: th.Tensor, obs_np: np.ndarray) -> float:
    """Compile the graphs ``sample`` and ``predict`` use for this batch and K; their compile time in seconds."""
    before = policy.compiled_integrator.compile_seconds
    policy.sample(obs)
    policy.predict(obs_np)  # predict's batch-1 path runs without oneDNN: its own graph
    return policy.compiled_integrator.compile_seconds - before


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
    compiled = copy.deepcopy(policy).compile_sampler()
    gaussian = PPO("MlpPolicy", env, policy_kwargs={"net_arch": policy.net_arch}, device="cpu").policy.eval()
    mlp, input_dim = bare_mlp_like(policy, obs_dim)
    hidden_weights = [(layer.weight.t().contiguous(), layer.bias) for layer in [*mlp][2:-1] if isinstance(layer, nn.Linear)]
    hidden_inputs = {batch: th.randn(batch, policy.net_arch[0]) for batch in (1, 256)}

    rows = []
    with th.no_grad():
        for batch in (1, 256):
            obs_np = np.random.default_rng(0).normal(size=(batch, obs_dim)).astype(np.float32)
            obs = th.as_tensor(obs_np)
            bare_input = th.randn(batch, input_dim)
            for n_steps in (1, 2, 4, 10):
                policy.n_flow_steps = compiled.n_flow_steps = n_steps
                compile_seconds = compile_graph(compiled, obs, obs_np)

                def bare_passes(bare_input=bare_input, n_steps=n_steps) -> None:
                    for _ in range(n_steps):
                        mlp(bare_input)

                def hidden_matmuls(hidden_input=hidden_inputs[batch], n_steps=n_steps) -> None:
                    # Only the hidden-to-hidden products of K passes, one ATen addmm each: what no sampler built on
                    # torch's kernels can skip (the first and last layers and the activations come on top).
                    for _ in range(n_steps):
                        for weight, bias in hidden_weights:
                            th.addmm(bias, hidden_input, weight)

                spread: dict[str, list[float]] = {}
                timings = paired_timings_us(
                    {
                        "sampler": lambda obs=obs: policy.sample(obs),
                        "compiled_sampler": lambda obs=obs: compiled.sample(obs),
                        "bare": bare_passes,
                        "hidden_matmuls": hidden_matmuls,
                        "flow_predict": lambda obs_np=obs_np: policy.predict(obs_np),
                        "compiled_predict": lambda obs_np=obs_np: compiled.predict(obs_np),
                        "gaussian_predict": lambda obs_np=obs_np: gaussian.predict(obs_np, deterministic=True),
                    },
                    args.repeats,
                    spread=spread,
                )
                saved_us = timings["flow_predict"] - timings["compiled_predict"]
                rows.append(
                    {
                        "batch": batch,
                        "K": n_steps,
                        "sampler_us": timings["sampler"],
                        "compiled_sampler_us": timings["compiled_sampler"],
                        "flow_predict_us": timings["flow_predict"],
                        "compiled_predict_us": timings["compiled_predict"],
                        "bare_k_passes_us": timings["bare"],
                        "hidden_matmuls_us": timings["hidden_matmuls"],
                        "gaussian_predict_us": timings["gaussian_predict"],
                        "sampler_over_bare": timings["sampler"] / timings["bare"],
                        "compiled_sampler_over_bare": timings["compiled_sampler"] / timings["bare"],
                        "compiled_predict_over_gaussian": timings["compiled_predict"] / timings["gaussian_predict"],
                        "predict_over_gaussian": timings["flow_predict"] / timings["gaussian_predict"],
                        "compile_seconds": compile_seconds,
                        "break_even_calls": compile_seconds / (saved_us * 1e-6) if saved_us > 0 else None,
                        "round_medians_us": spread,
                    }
                )

    header = (
        "| batch | K | sampler eager / compiled (µs) | K bare passes (µs) | their hidden matmuls alone (µs) "
        "| sampler / bare: eager, compiled "
        "| FlowPolicy.predict eager / compiled (µs) | SB3 Gaussian predict (µs) | compiled predict / Gaussian "
        "| compile (s) | break-even (calls) |"
    )
    print(header)
    print("|" + "---|" * 11)
    for row in rows:
        break_even = "never" if row["break_even_calls"] is None else f"{row['break_even_calls']:,.0f}"
        print(
            f"| {row['batch']} | {row['K']} | {row['sampler_us']:.0f} / {row['compiled_sampler_us']:.0f} | "
            f"{row['bare_k_passes_us']:.0f} | {row['hidden_matmuls_us']:.0f} | "
            f"{row['sampler_over_bare']:.2f}, {row['compiled_sampler_over_bare']:.2f} | "
            f"{row['flow_predict_us']:.0f} / {row['compiled_predict_us']:.0f} | {row['gaussian_predict_us']:.0f} | "
            f"{row['compiled_predict_over_gaussian']:.2f} | {row['compile_seconds']:.1f} | {break_even} |"
        )
    write_json(args.out, {"env": args.env, "net_arch": policy.net_arch, "torch": th.__version__, "rows": rows})


if __name__ == "__main__":
    main()
