"""
Where the on-policy flow algorithms' training time goes, against SB3 PPO: rollout seconds and update seconds per 2048
environment steps, and the steps/s ratio to PPO, for FlowPPO and ReinFlow at their target settings and with the flow
steps K and the draws N cut to 1. All in one process, alternating, Pendulum-v1, n_envs = 8, ``n_steps=256``,
``batch_size=256``, ``n_epochs=10``, 64-64 networks (the flows' default GELU, PPO's tanh).

The K = 1 / N = 1 rows run the same code paths with the method's own work cut to PPO's: they show what the sb3-flow
machinery costs by itself, so the gap at the target settings is the K sequential velocity calls per rollout step and
the N draws (or K chain steps) per action in each minibatch.

Issue 16 rows: "compiled" runs the rollouts through ``policy.compile_sampler()`` (one torch.compile graph of the K-step
integration); its compile time is taken out of the rollout time and reported apart, so its steps/s are those of a run
long enough to amortize it (the break-even length is compile seconds / seconds saved per step; the first model of a
process compiles, later ones of the same architecture reuse the graph). The flows' optimizer is torch's fused Adam by
default; "unfused Adam" passes ``optimizer_kwargs={"fused": False}`` (torch's default implementation, as SB3's PPO
uses): one change per row, to measure each alone.

    python -m benchmarks.on_policy_time_split [--env Pendulum-v1] [--steps 8192] [--repeats 3]

``--defaults``: each class with its own defaults and nothing else (``PPO("MlpPolicy", env)``,
``FlowPPO("MlpPolicy", env)``, ``ReinFlow("MlpPolicy", env)``), n_envs = 8; target (issue 16) FlowPPO >= 0.5x PPO.
Their rollouts are 2,048 steps per env, so ``--steps 16384`` is one rollout and one update each.

    python -m benchmarks.on_policy_time_split --defaults --steps 16384 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from benchmarks.common import print_speed_ratios, write_json
from benchmarks.sampling_latency import paired_timings_us
from sb3_flow import FlowPPO, ReinFlow, set_torch_threads

SHARED = {"n_steps": 256, "batch_size": 256, "n_epochs": 10, "learning_rate": 1e-3, "gamma": 0.9}
FLOW_ARCH = {"net_arch": [64, 64], "value_net_arch": [64, 64]}
COMPILED = "compile_sampler"
UNFUSED_ADAM = {"optimizer_kwargs": {"fused": False}}
CONFIGS: dict[str, tuple[type, dict[str, Any]]] = {
    "PPO": (PPO, {}),
    "FlowPPO K=10 N=8 (target)": (FlowPPO, {"n_flow_steps": 10, "n_mc_samples": 8}),
    "FlowPPO K=10 N=8 compiled": (FlowPPO, {"n_flow_steps": 10, "n_mc_samples": 8, COMPILED: True}),
    "FlowPPO K=10 N=8 unfused Adam": (FlowPPO, {"n_flow_steps": 10, "n_mc_samples": 8, "policy_kwargs": UNFUSED_ADAM}),
    "FlowPPO K=1 N=8": (FlowPPO, {"n_flow_steps": 1, "n_mc_samples": 8}),
    "FlowPPO K=10 N=1": (FlowPPO, {"n_flow_steps": 10, "n_mc_samples": 1}),
    "FlowPPO K=1 N=1": (FlowPPO, {"n_flow_steps": 1, "n_mc_samples": 1}),
    "ReinFlow K=4 (target)": (ReinFlow, {"n_flow_steps": 4}),
    "ReinFlow K=4 compiled": (ReinFlow, {"n_flow_steps": 4, COMPILED: True}),
    "ReinFlow K=1": (ReinFlow, {"n_flow_steps": 1}),
}
DEFAULTS_CONFIGS: dict[str, tuple[type, dict[str, Any]]] = {
    "PPO": (PPO, {}),
    "FlowPPO (its defaults)": (FlowPPO, {}),
    "ReinFlow (its defaults)": (ReinFlow, {}),
}


def timed_learn(model: Any, steps: int) -> tuple[float, float, float, float]:
    """
    Train ``steps`` steps; return (rollout seconds, update seconds, total seconds, compile seconds), the compile time
    of a compiled sampler taken out of the rollout and total seconds.
    """
    seconds = {"rollout": 0.0, "update": 0.0}

    def timing(method: Any, key: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = method(*args, **kwargs)
            seconds[key] += time.perf_counter() - start
            return result

        return wrapper

    model.collect_rollouts = timing(model.collect_rollouts, "rollout")
    model.train = timing(model.train, "update")
    start = time.perf_counter()
    model.learn(steps)
    total = time.perf_counter() - start
    integrator = getattr(model.policy, "compiled_integrator", None)
    compile_seconds = 0.0 if integrator is None else integrator.compile_seconds
    return seconds["rollout"] - compile_seconds, seconds["update"], total - compile_seconds, compile_seconds


def make_model(name: str, env_id: str, seed: int, defaults: bool = False) -> Any:
    env = make_vec_env(env_id, n_envs=8, seed=seed)
    if defaults:
        return DEFAULTS_CONFIGS[name][0]("MlpPolicy", env, seed=seed, device="cpu")
    algorithm, kwargs = CONFIGS[name]
    kwargs = dict(kwargs)
    compiled = kwargs.pop(COMPILED, False)
    if algorithm is PPO:
        return PPO("MlpPolicy", env, seed=seed, device="cpu", **SHARED)
    policy_kwargs = {**FLOW_ARCH, **kwargs.pop("policy_kwargs", {})}
    model = algorithm("MlpPolicy", env, seed=seed, device="cpu", policy_kwargs=policy_kwargs, **SHARED, **kwargs)
    if compiled:
        model.policy.compile_sampler()
    return model


def rollout_forward_timings(env_id: str) -> dict[str, dict[str, float]]:
    """
    One rollout step's policy call (8 observations: action, value, chain) of the target settings, eager against
    compiled, in alternating rounds (µs): the part of the rollout the compiled sampler can change, without the
    environments and the buffer.
    """
    results = {}
    for name in ("FlowPPO K=10 N=8 (target)", "ReinFlow K=4 (target)"):
        eager = make_model(name, env_id, 0).policy
        compiled = copy.deepcopy(eager).compile_sampler()
        observations = th.randn(8, *eager.observation_space.shape)
        with th.no_grad():
            compiled(observations)  # compiles
            results[name] = paired_timings_us(
                {
                    "eager": lambda eager=eager, observations=observations: eager(observations),
                    "compiled": lambda compiled=compiled, observations=observations: compiled(observations),
                },
                2000,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--steps", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--defaults", action="store_true", help="each class with its own defaults")
    parser.add_argument("--out", default="benchmark_output/on_policy_time_split.json")
    args = parser.parse_args()
    set_torch_threads(1)

    configs = DEFAULTS_CONFIGS if args.defaults else CONFIGS
    speeds: dict[str, list[float]] = {name: [] for name in configs}
    splits: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    compile_seconds: dict[str, list[float]] = {name: [] for name in configs}
    per_2048 = 2048 / args.steps
    for repeat in range(args.repeats):
        for name in configs:
            rollout, update, total, compiling = timed_learn(make_model(name, args.env, repeat, args.defaults), args.steps)
            speeds[name].append(args.steps / total)
            compile_seconds[name].append(compiling)
            splits[name].append((rollout * per_2048, update * per_2048))
        print(repeat, {name: round(values[-1]) for name, values in speeds.items()}, flush=True)

    print(f"\n{args.env}, n_envs = 8, {args.steps} steps per run, {args.repeats} repeats")
    print("\n| method | rollout s per 2048 steps (median) | update s per 2048 steps (median) | compile s (first model) |")
    print("|---|---|---|---|")
    for name, values in splits.items():
        rollout, update = np.median(np.array(values), axis=0)
        print(f"| {name} | {rollout:.3f} | {update:.3f} | {max(compile_seconds[name]):.1f} |")
    print_speed_ratios(speeds, "PPO")
    forward = {} if args.defaults else rollout_forward_timings(args.env)
    if forward:
        print("\n| rollout step's policy call, 8 observations | eager (µs) | compiled (µs) | speed-up |")
        print("|---|---|---|---|")
        for name, timing in forward.items():
            print(
                f"| {name} | {timing['eager']:.0f} | {timing['compiled']:.0f} | {timing['eager'] / timing['compiled']:.2f}x |"
            )
    write_json(
        args.out,
        {
            "args": vars(args),
            "settings": "each class's defaults" if args.defaults else SHARED,
            "steps_per_s": speeds,
            "seconds_per_2048": splits,
            "compile_seconds": compile_seconds,
            "rollout_forward_us": forward,
        },
    )


if __name__ == "__main__":
    main()
