"""
Overhead of the steering wrappers: SAC on Pendulum-v1 through NoiseActionWrapper (DSRL) and ResidualActionWrapper
vs SAC on the raw environment, in one process, alternating the three in short timed chunks so that a busy machine
slows them alike. The base policy is a FlowBC policy of the default size (256-256-256, K = 10).
Target (steering issue): SAC on the wrapped environment runs at >= 0.9x the steps/s of SAC on the raw one.

    python -m benchmarks.steering_overhead [--chunk 500] [--repeats 4]
    python -m benchmarks.steering_overhead --report FILE   # reprint the table of a run's JSON
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env

from benchmarks.common import print_speed_ratios, write_json
from sb3_flow import DSRLNA, FlowBC, collect_demonstrations, set_torch_threads
from sb3_flow.experiments import pendulum_swing_up, steering_wrapper

ENV_ID = "Pendulum-v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk", type=int, default=500, help="SAC steps per timed chunk")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", default="benchmark_output/steering_overhead.json")
    parser.add_argument("--report", metavar="FILE", help="only print the table of this JSON output")
    args = parser.parse_args()
    if args.report:
        print_speed_ratios(json.loads(Path(args.report).read_text())["steps_per_s"], "raw", label="SAC on")
        return
    set_torch_threads(1)

    demos = collect_demonstrations(ENV_ID, pendulum_swing_up, 10, seed=0)
    base = FlowBC("MlpPolicy", ENV_ID, demos, seed=0, device="cpu").learn(200)
    wrappers = {
        "raw": None,
        "NoiseActionWrapper": steering_wrapper("dsrl", base.policy, vectorized=False),
        "ResidualActionWrapper": steering_wrapper("residual", base.policy, vectorized=False),
    }
    models = {
        name: SAC(
            "MlpPolicy", make_vec_env(ENV_ID, n_envs=1, seed=0, wrapper_class=wrapper), learning_starts=100, seed=0,
            device="cpu",
        )
        for name, wrapper in wrappers.items()
    }  # fmt: skip
    models["DSRL-NA"] = DSRLNA("MlpPolicy", ENV_ID, base_policy=base.policy, learning_starts=100, seed=0, device="cpu")
    for name in ("NoiseActionWrapper", "ResidualActionWrapper"):
        models[f"{name} compiled"] = SAC(
            "MlpPolicy", make_vec_env(ENV_ID, n_envs=1, seed=0, wrapper_class=wrappers[name]), learning_starts=100, seed=0,
            device="cpu",
        )  # fmt: skip
        models[f"{name} compiled"].get_env().envs[0].base_policy.compile_sampler()
    models["DSRL-NA compiled"] = DSRLNA(
        "MlpPolicy", ENV_ID, base_policy=base.policy, learning_starts=100, seed=0, device="cpu"
    )
    models["DSRL-NA compiled"].base_policy.compile_sampler()
    for model in models.values():
        model.learn(200)  # past learning_starts: every timed step includes a gradient step (and graphs are compiled)
    speeds: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.learn(args.chunk, reset_num_timesteps=False)
            speeds[name].append(args.chunk / (time.perf_counter() - start))
        print(repeat, {name: round(values[-1], 1) for name, values in speeds.items()}, flush=True)

    print_speed_ratios(speeds, "raw", label="SAC on")
    write_json(args.out, {"args": vars(args), "steps_per_s": speeds})


if __name__ == "__main__":
    main()
