"""
Distill back on Pendulum-v1: DSRL (SAC on NoiseActionWrapper) and residual SAC steer the standard FlowBC base for a
fixed budget (the agents of benchmarks/steering_pendulum.py), then each steered policy is distilled into one FlowBC,
warm-started from the base, on its own deterministic rollouts (``sb3_flow.bc.distill``).
Reported per method over seeds: deterministic return on 50 fixed starts of the base, the steered policy and the
distilled flow; the share of the steering gain the distilled flow keeps, (distilled - base) / (steered - base); and
``predict`` latency at batch 1 of the distilled FlowPolicy vs the steered agent + wrapper (the functions take turns in
one process; the fastest round's median counts, as in benchmarks/sampling_latency.py), as a ratio.
Target (distill-back issue): the distilled flow keeps >= 80% of the steering gain.

    python -m benchmarks.distill_pendulum [--steps 10000] [--seeds 0 1 2] [--methods dsrl residual] [--episodes 50]
        [--distill-steps 5000] [--learning-rate 1e-3] [--mix-demonstrations] [--residual-scale 0.5]
        [--latency-repeats 2000] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import gymnasium as gym
import numpy as np

from benchmarks.common import evaluate_on_starts, mean_std, write_json
from benchmarks.sampling_latency import paired_timings_us
from benchmarks.steering_pendulum import evaluate_wrapped, make_agent
from sb3_flow import Demonstrations, FlowBC, set_torch_threads
from sb3_flow.bc import distill, steered_policy
from sb3_flow.experiments import PENDULUM_PIPELINE, pretrained_base

ENV_ID = PENDULUM_PIPELINE.env_id


def gain_kept(base: float, steered: float, distilled: float) -> float | None:
    """(distilled - base) / (steered - base); None when steering gained nothing (there is no gain to keep)."""
    return None if steered <= base else (distilled - base) / (steered - base)


def predict_latency_us(steered: Any, distilled: Any, repeats: int) -> dict[str, float]:
    """Batch-1 ``predict`` of the steered agent + wrapper and of the distilled FlowPolicy, on one Pendulum observation."""
    obs, _ = gym.make(ENV_ID).reset(seed=0)
    return paired_timings_us(
        {
            "steered": lambda: steered.predict(obs, deterministic=True),
            "distilled": lambda: distilled.predict(obs, deterministic=True),
        },
        repeats,
    )


def run(method: str, base: FlowBC, demos: Demonstrations, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Steer the base with ``method`` for ``args.steps`` environment steps, distill it, measure both."""
    agent = make_agent(method, base, seed, args.residual_scale)
    start = time.perf_counter()
    agent.learn(args.steps)
    steer_s = time.perf_counter() - start
    steered_return = evaluate_wrapped(agent, method, base, args.residual_scale)
    start = time.perf_counter()
    model = distill(
        agent,
        n_episodes=args.episodes,
        n_gradient_steps=args.distill_steps,
        demonstrations=demos if args.mix_demonstrations else None,
        flow_bc_kwargs={"learning_rate": args.learning_rate, "device": "cpu"},
        seed=seed,
        verbose=1,
    )
    distill_s = time.perf_counter() - start
    distilled_return = evaluate_on_starts(model.policy, ENV_ID)
    latency = predict_latency_us(steered_policy(agent), model.policy, args.latency_repeats)
    result = {
        "steered": steered_return,
        "distilled": distilled_return,
        "steer_s": steer_s,
        "distill_s": distill_s,
        "latency_us": latency,
    }
    print(
        f"  {method} seed {seed}: steered {steered_return:.1f}, distilled {distilled_return:.1f}; predict "
        f"{latency['steered']:.0f} / {latency['distilled']:.0f} µs",
        flush=True,
    )
    return result


def report(base_return: float, results: dict[str, list[dict[str, Any]]]) -> None:
    """The Markdown table: returns, the steering gain kept (mean and per seed), latencies and their ratio."""
    print(f"\n{ENV_ID}: FlowBC base {base_return:.1f} on 50 fixed starts")
    print(
        "| method | seeds | steered | distilled | steering gain kept (per seed) | predict µs, steered / distilled "
        "(median over seeds) | latency ratio steered / distilled (per seed) |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, runs in results.items():
        kept = [gain_kept(base_return, run["steered"], run["distilled"]) for run in runs]
        shares = [value for value in kept if value is not None]
        kept_cell = f"{100 * np.mean(shares):.0f}%" if shares else "no gain"
        per_seed = ", ".join("no gain" if value is None else f"{100 * value:.0f}%" for value in kept)
        steered_us = [run["latency_us"]["steered"] for run in runs]
        distilled_us = [run["latency_us"]["distilled"] for run in runs]
        ratios = ", ".join(f"{s / d:.2f}" for s, d in zip(steered_us, distilled_us, strict=True))
        print(
            f"| {method} | {len(runs)} | {mean_std([run['steered'] for run in runs])} | "
            f"{mean_std([run['distilled'] for run in runs])} | {kept_cell} ({per_seed}) | "
            f"{np.median(steered_us):.0f} / {np.median(distilled_us):.0f} | {ratios} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000, help="environment steps of each steering agent")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=("dsrl", "residual"), default=["dsrl", "residual"])
    parser.add_argument("--episodes", type=int, default=50, help="deterministic rollout episodes distilled")
    parser.add_argument("--distill-steps", type=int, default=5_000, help="FlowBC gradient steps of the distillation")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="FlowBC learning rate (the base's)")
    parser.add_argument("--mix-demonstrations", action="store_true", help="mix the base's demonstrations into the data")
    parser.add_argument("--residual-scale", type=float, default=0.5, help="residual SAC's scale (steering_pendulum's)")
    parser.add_argument("--latency-repeats", type=int, default=2_000, help="predict calls timed per function")
    parser.add_argument(
        "--bc-steps", type=int, default=PENDULUM_PIPELINE.bc_steps, help="the base's FlowBC steps (smoke runs only)"
    )
    parser.add_argument("--out", default="benchmark_output/distill_pendulum.json")
    args = parser.parse_args()
    set_torch_threads(1)

    _, demos, base = pretrained_base(dataclasses.replace(PENDULUM_PIPELINE, bc_steps=args.bc_steps))
    base_return = evaluate_on_starts(base.policy, ENV_ID)
    print(f"FlowBC base {base_return:.1f}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {method: [] for method in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            results[method].append(run(method, base, demos, seed, args))
    write_json(args.out, {"args": vars(args), "base": base_return, "results": results})
    report(base_return, results)


if __name__ == "__main__":
    main()
