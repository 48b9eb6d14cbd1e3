"""
Cost of sampling a flow with a critic, at batch 1 (one decision, as in a rollout or a robot's control loop):

- ``BestOfNPolicy.predict`` with N = 32 against N = 1 (target, issue 13: <= 3x: the N samples are one batched
  integration of N rows, then one batched critic call);
- CFGRL's guided sampling (w = 1.5: both branches per integration step, batched together) against unguided sampling
  of the same network (w = 0: one branch) (target <= 2.1x);
- critic-gradient guidance (lambda = 0.01: one critic forward and backward per step) against lambda = 0 (reported).

FQL's networks (4 x 512 GELU MLPs, 2 critics with layer norm), K = 10, Pendulum-v1 spaces, untrained weights (the cost
does not depend on them). The variants are timed in alternating chunks of ``--calls`` calls in one process,
``--repeats`` times; the ratios are medians of per-repeat ratios.

    python -m benchmarks.sampler_cost [--repeats 7] [--calls 300] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks.common import write_json
from sb3_flow import CFGRL, IFQL, BestOfNPolicy, CriticGuidedPolicy, set_torch_threads
from sb3_flow.policies.flow_q import FQL_NET_ARCH

ENV_ID = "Pendulum-v1"


def microseconds_per_call(policy: Any, observation: np.ndarray, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        policy.predict(observation, deterministic=False)  # returns numpy: the device has finished
    return 1e6 * (time.perf_counter() - start) / calls


class Knob:
    """A policy with one test-time knob set before each timed chunk (the variants share one network)."""

    def __init__(self, policy: Any, name: str, value: Any):
        self.policy, self.name, self.value = policy, name, value

    def predict(self, observation: np.ndarray, deterministic: bool = False) -> Any:
        return self.policy.predict(observation, deterministic=deterministic)

    def set(self) -> None:
        setattr(self.policy, self.name, self.value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmark_output/sampler_cost.json")
    args = parser.parse_args()
    set_torch_threads(1)
    networks = {"net_arch": list(FQL_NET_ARCH), "critic_net_arch": list(FQL_NET_ARCH)}
    ifql = IFQL("MlpPolicy", ENV_ID, n_flow_steps=10, policy_kwargs=networks, device=args.device, seed=0)
    cfgrl = CFGRL("MlpPolicy", ENV_ID, n_flow_steps=10, policy_kwargs=networks, device=args.device, seed=0)
    best_of_n = BestOfNPolicy(ifql.bc_policy, ifql, n_samples=1)
    guided = CriticGuidedPolicy(ifql.bc_policy, ifql, guidance_scale=0.0)
    variants = {
        "best-of-N, N = 1": Knob(best_of_n, "n_samples", 1),
        "best-of-N, N = 32": Knob(best_of_n, "n_samples", 32),
        "CFGRL, w = 0 (one branch)": Knob(cfgrl.policy, "guidance_weight", 0.0),
        "CFGRL, w = 1.5 (both branches)": Knob(cfgrl.policy, "guidance_weight", 1.5),
        "critic-gradient guidance, lambda = 0": Knob(guided, "guidance_scale", 0.0),
        "critic-gradient guidance, lambda = 0.01": Knob(guided, "guidance_scale", 0.01),
    }
    observation = np.zeros((1, 3), np.float32)
    for variant in variants.values():  # warm-up
        variant.set()
        microseconds_per_call(variant, observation, 20)
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, variant in variants.items():
            variant.set()
            timings[name].append(microseconds_per_call(variant, observation, args.calls))

    pairs = [
        ("best-of-N, N = 32", "best-of-N, N = 1", "<= 3x"),
        ("CFGRL, w = 1.5 (both branches)", "CFGRL, w = 0 (one branch)", "<= 2.1x"),
        ("critic-gradient guidance, lambda = 0.01", "critic-gradient guidance, lambda = 0", "reported"),
    ]
    print(f"\npredict at batch 1 on {args.device}, 4 x 512 networks, K = 10")
    print("| variant | µs per call (median) | against | ratio (median of per-repeat ratios) | range | target |")
    print("|---|---|---|---|---|---|")
    for name, reference, target in pairs:
        ratios = np.array(timings[name]) / np.array(timings[reference])
        print(
            f"| {name} | {np.median(timings[name]):.0f} | {reference} ({np.median(timings[reference]):.0f} µs) | "
            f"{np.median(ratios):.2f}x | {ratios.min():.2f}-{ratios.max():.2f} | {target} |"
        )
    write_json(args.out, {"settings": vars(args), "predict_us": timings})


if __name__ == "__main__":
    main()
