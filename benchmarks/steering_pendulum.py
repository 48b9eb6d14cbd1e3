"""
Steering a frozen Pendulum FlowBC base: DSRL (SAC on NoiseActionWrapper), DSRL-NA, residual SAC (over a deliberately
weaker base: FlowBC from 10 episodes with action noise 0.6), beside SAC from scratch; same environment steps, several
seeds; deterministic returns on 50 fixed initial states (paired across methods).
Targets (steering issue): DSRL and DSRL-NA reach >= 90% of the expert's return within 20k steps, in fewer steps than
SAC from scratch; residual SAC reaches >= 90% of the expert. (The wrappers' overhead: benchmarks/steering_overhead.py.)

    python -m benchmarks.steering_pendulum [--steps 20000] [--eval-every 1000] [--seeds 0 1 2]
        [--methods dsrl dsrl_na residual sac] [--residual-scale 0.5] [--out FILE]

DSRL's and DSRL-NA's agents start at the base policy (a zeroed actor mean head); the residual agent at zero correction.
    python -m benchmarks.steering_pendulum --report FILE [FILE ...]   # merge runs made in separate processes
    python -m benchmarks.steering_pendulum --recover-log LOG --seeds 1 --out FILE   # the finished runs of a stopped one

``--recover-log`` rebuilds the curves of the (method, seed) runs that a stopped process completed from the lines it
printed (returns to 0.1), re-evaluating only their untrained starting points, which the seed determines.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env

from benchmarks.common import curve_parser, evaluate_on_starts, mean_std, plot_curves, write_json
from sb3_flow import DSRLNA, FlowBC, collect_demonstrations, set_torch_threads
from sb3_flow.experiments import (
    DSRL_NOISE_BOUND,
    PENDULUM_PIPELINE,
    STEERING_SAC,
    pretrain,
    pretrained_base,
    returns_on_starts,
    steering_wrapper,
)
from sb3_flow.wrappers import zero_init_actor

ENV_ID = PENDULUM_PIPELINE.env_id


def make_agent(method: str, base: FlowBC, seed: int, residual_scale: float) -> SAC:
    if method == "dsrl_na":
        env = make_vec_env(ENV_ID, n_envs=1, seed=seed)
        # start_at_base=True (the default) zeroes the actor's mean head, as zero_init_actor does for the wrapped SAC below
        return DSRLNA(
            "MlpPolicy", env, base_policy=base.policy, noise_bound=DSRL_NOISE_BOUND, seed=seed, device="cpu", **STEERING_SAC
        )  # fmt: skip
    wrapper = steering_wrapper(method, base.policy, vectorized=False, **_wrapper_kwargs(method, residual_scale))
    model = SAC(
        "MlpPolicy", make_vec_env(ENV_ID, n_envs=1, seed=seed, wrapper_class=wrapper), seed=seed, device="cpu", **STEERING_SAC
    )
    if method in ("residual", "dsrl"):
        zero_init_actor(model)  # start exactly at the base policy (zero correction / zero initial noise)
    return model


def _wrapper_kwargs(method: str, residual_scale: float) -> dict:
    return {"residual_scale": residual_scale} if method == "residual" else {}


def evaluate_wrapped(model: SAC, method: str, base: FlowBC, residual_scale: float) -> float:
    """Deterministic return on the 50 fixed starts, through the Vec form of the wrapper the agent was trained in."""
    wrap = steering_wrapper(method, base.policy, **_wrapper_kwargs(method, residual_scale))  # None: the env's own actions
    return float(returns_on_starts(model, ENV_ID, 50, wrap=wrap).mean())


def report(payloads: list[dict]) -> None:
    """Merge the runs of one or more JSON outputs (same expert and bases) into one table and one plot."""
    first = payloads[0]
    expert_return, bc_return, weak_return = first["expert"], first["bc"], first["weak_bc"]
    curves: dict[str, list] = {}
    for payload in payloads:
        for method, runs in payload["curves"].items():
            curves.setdefault(method, []).extend(runs)
    threshold = 0.9 * expert_return if expert_return > 0 else expert_return / 0.9
    print(
        f"\n{ENV_ID}: expert {expert_return:.1f}, FlowBC base {bc_return:.1f}, weaker base (residual) {weak_return:.1f}, "
        f"90%-of-expert threshold {threshold:.1f}"
    )
    # Speed is measured by benchmarks/steering_overhead.py (alternating chunks in one process), not here.
    print("| method | seeds | final return (mean ± std over seeds) | first step at >= 90% of expert (per seed) |")
    print("|---|---|---|---|")
    for method, runs in curves.items():
        finals = [curve[-1][1] for curve in runs]
        reach = [next((step for step, value in curve if value >= threshold), None) for curve in runs]
        print(f"| {method} | {len(runs)} | {mean_std(finals)} | {reach} |")
    plot_curves(
        curves, "docs/img/steering_pendulum.png", "Steering a FlowBC base on Pendulum-v1 with SAC",
        hlines={"expert": expert_return, "FlowBC base": bc_return, "weaker base": weak_return},
        ylim=(-220, -125),  # SAC from scratch starts near -1400: the range where the methods differ
    )  # fmt: skip


def recover_curves(log: str, args: argparse.Namespace, base: FlowBC, weak_base: FlowBC) -> dict[str, list]:
    """Curves of the runs in ``args.seeds`` x ``args.methods`` that ``log`` shows complete (see the module docstring)."""
    printed: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for match in re.finditer(r"^  (\w+) seed (\d+) (\d+): (-?[\d.]+)$", log, flags=re.MULTILINE):
        method, seed, steps, value = match.groups()
        printed.setdefault((method, int(seed)), []).append((int(steps), float(value)))
    curves: dict[str, list] = {}
    for seed in args.seeds:
        for method in args.methods:
            points = printed.get((method, seed), [])
            if not points or points[-1][0] < args.steps:
                continue
            method_base = weak_base if method == "residual" else base
            start = evaluate_wrapped(
                make_agent(method, method_base, seed, args.residual_scale), method, method_base, args.residual_scale
            )
            curves.setdefault(method, []).append([(0, start), *points])
            print(f"  recovered {method} seed {seed}: start {start:.1f}, final {points[-1][1]:.1f}", flush=True)
    return curves


def main() -> None:
    parser = curve_parser(__doc__, steps=20_000, eval_every=1_000, out="benchmark_output/steering_pendulum.json")
    parser.add_argument("--methods", nargs="+", default=["dsrl", "dsrl_na", "residual", "sac"])
    parser.add_argument("--residual-scale", type=float, default=0.5)
    parser.add_argument("--report", nargs="+", metavar="FILE", help="only merge and print these JSON outputs")
    parser.add_argument("--recover-log", metavar="LOG", help="rebuild the completed runs of a stopped process from its log")
    args = parser.parse_args()
    if args.report:
        report([json.loads(Path(path).read_text()) for path in args.report])
        return
    set_torch_threads(1)

    expert, _, base = pretrained_base(PENDULUM_PIPELINE)
    weak_demos = collect_demonstrations(ENV_ID, expert, 10, action_noise=0.6, seed=1)
    weak_base = pretrain(FlowBC, ENV_ID, weak_demos, 2_000, learning_rate=1e-3, seed=0)
    expert_return = evaluate_on_starts(expert, ENV_ID)
    bc_return = evaluate_on_starts(base.policy, ENV_ID)
    weak_return = evaluate_on_starts(weak_base.policy, ENV_ID)
    print(f"expert {expert_return:.1f}, FlowBC base {bc_return:.1f}, weaker base {weak_return:.1f}", flush=True)

    if args.recover_log:
        curves = recover_curves(Path(args.recover_log).read_text(), args, base, weak_base)
        payload = {"args": vars(args), "expert": expert_return, "bc": bc_return, "weak_bc": weak_return, "curves": curves}
        write_json(args.out, payload)
        report([payload])
        return

    curves: dict[str, list] = {method: [] for method in args.methods}
    speeds: dict[str, list[float]] = {method: [] for method in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            method_base = weak_base if method == "residual" else base
            model = make_agent(method, method_base, seed, args.residual_scale)
            curve = [(0, evaluate_wrapped(model, method, method_base, args.residual_scale))]
            seconds = 0.0
            while model.num_timesteps < args.steps:
                start = time.perf_counter()
                model.learn(args.eval_every, reset_num_timesteps=False)
                seconds += time.perf_counter() - start
                curve.append((model.num_timesteps, evaluate_wrapped(model, method, method_base, args.residual_scale)))
                print(f"  {method} seed {seed} {model.num_timesteps}: {curve[-1][1]:.1f}", flush=True)
            curves[method].append(curve)
            speeds[method].append(model.num_timesteps / seconds)

    payload = {
        "args": vars(args),
        "expert": expert_return,
        "bc": bc_return,
        "weak_bc": weak_return,
        "curves": curves,
        "steps_per_s": speeds,
    }
    write_json(args.out, payload)
    report([payload])


if __name__ == "__main__":
    main()
