"""
Speed of FQL's updates and inference against SB3's SAC and the BPTT baseline (FBRAC), on Pendulum-v1 data.

Gradient steps/s: FQL, FBRAC and SB3 SAC with the same hidden layers and batch, each trained on a replay buffer holding
the same dataset; measured in alternating chunks of ``--chunk`` gradient steps in one process, ``--repeats`` times, so
every method sees the same machine state; the ratios are the medians of per-repeat ratios. Inference: ``predict`` on
one observation, ``--predict-calls`` calls per repeat, FQL (one forward pass of the one-step policy) against SAC's actor
and against FlowBC's K-step integration.
Targets (issue 12): FQL >= 2x FBRAC's gradient steps/s at K = 10; FQL's ``predict`` at batch 1 <= 1.2x SAC's.

    python -m benchmarks.fql_speed [--hidden 256 256] [--batch-size 256] [--repeats 5] [--chunk 100] [--device cuda]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from stable_baselines3 import SAC

from benchmarks.common import print_speed_ratios, write_json
from sb3_flow import FBRAC, FQL, collect_demonstrations, set_torch_threads
from sb3_flow.experiments import pendulum_swing_up

ENV_ID = "Pendulum-v1"


def sac_with_dataset(demos: Any, hidden: list[int], batch_size: int, device: str = "cpu") -> SAC:
    """SB3's SAC with its replay buffer holding the dataset (actions normalized as SAC stores them)."""
    model = SAC("MlpPolicy", ENV_ID, batch_size=batch_size, policy_kwargs={"net_arch": hidden}, device=device, seed=0)
    model._setup_learn(1, None)  # the logger that train() records to
    actions = model.policy.scale_action(demos.actions)
    for row in range(len(demos)):
        model.replay_buffer.add(
            demos.observations[row : row + 1],
            demos.next_observations[row : row + 1],
            actions[row : row + 1],
            demos.rewards[row : row + 1],
            demos.terminations[row : row + 1],
            [{}],
        )
    return model


def flow_model(algorithm: type, demos: Any, hidden: list[int], batch_size: int, n_flow_steps: int, device: str = "cpu") -> Any:
    policy_kwargs = {"net_arch": hidden, "critic_net_arch": hidden}
    model = algorithm(
        "MlpPolicy", ENV_ID, dataset=demos, batch_size=batch_size, n_flow_steps=n_flow_steps, policy_kwargs=policy_kwargs,
        device=device, seed=0,
    )  # fmt: skip
    model._setup_learn(1, None)
    return model


def gradient_steps_per_second(model: Any, steps: int) -> float:
    start = time.perf_counter()
    model.train(gradient_steps=steps, batch_size=model.batch_size)
    return steps / (time.perf_counter() - start)


def predict_microseconds(policy: Any, observation: np.ndarray, calls: int) -> float:
    policy.predict(observation, deterministic=True)
    start = time.perf_counter()
    for _ in range(calls):
        policy.predict(observation, deterministic=True)
    return 1e6 * (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-flow-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=100, help="gradient steps per method per repeat")
    parser.add_argument("--predict-calls", type=int, default=1000)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default="benchmark_output/fql_speed.json")
    args = parser.parse_args()
    set_torch_threads(1)

    demos = collect_demonstrations(ENV_ID, pendulum_swing_up, 20, action_noise=0.5, seed=0)
    models = {
        "SAC": sac_with_dataset(demos, args.hidden, args.batch_size, args.device),
        "FQL": flow_model(FQL, demos, args.hidden, args.batch_size, args.n_flow_steps, args.device),
        "FBRAC": flow_model(FBRAC, demos, args.hidden, args.batch_size, args.n_flow_steps, args.device),
    }
    for model in models.values():  # warm-up
        gradient_steps_per_second(model, 5)
    train_speeds: dict[str, list[float]] = {name: [] for name in models}
    observation = demos.observations[:1]
    predictors = {"SAC": models["SAC"].policy, "FQL": models["FQL"].policy, "FlowBC (K-step flow)": models["FQL"].bc_policy}
    latency: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(args.repeats):
        for name, model in models.items():
            train_speeds[name].append(gradient_steps_per_second(model, args.chunk))
        for name, policy in predictors.items():
            latency[name].append(predict_microseconds(policy, observation, args.predict_calls))

    print(f"\nGradient steps/s on {args.device}, hidden {args.hidden}, batch {args.batch_size}, K = {args.n_flow_steps}")
    print_speed_ratios(train_speeds, baseline="SAC")
    fql_over_fbrac = np.median(np.array(train_speeds["FQL"]) / np.array(train_speeds["FBRAC"]))
    print(f"\nFQL / FBRAC gradient steps/s: {fql_over_fbrac:.2f}x (median of per-repeat ratios; target >= 2x)")
    print("\n| predict at batch 1 | µs per call (median) | ratio to SAC (median of per-repeat ratios) |")
    print("|---|---|---|")
    for name, values in latency.items():
        ratio = np.median(np.array(values) / np.array(latency["SAC"]))
        print(f"| {name} | {np.median(values):.0f} | {ratio:.2f}x |")
    write_json(args.out, {"settings": vars(args), "gradient_steps_per_second": train_speeds, "predict_us": latency})


if __name__ == "__main__":
    main()
