"""
Residual exploration on Pendulum-v1 (issue 17): from the standard FlowBC base (``sb3_flow.experiments.PENDULUM_PIPELINE``),
the variance residual (``VarianceResidualSACPolicy`` / ``VarianceResidualPolicy`` on ``ResidualActionWrapper``) trained
by SAC and by PPO, against the mean residual (SAC on the same wrapper, zero-initialized mean head) and DSRL (SAC on the
noise-space wrapper), with the same number of environment steps and seeds.

Every residual: ``residual_scale`` 0.5 (``--residual-scale``), the base action appended to the observation. Variance
residuals: ``learn_mean=True`` (a mean correction beside the state-dependent std; with ``learn_mean=False`` the
deterministic action is the base's by construction) and ``log_std_init=-1``; ``--variance-only`` adds SAC with
``learn_mean=False``, whose stochastic return is the one that can change. SAC: ``STEERING_SAC`` (learning rate 1e-3);
PPO: SB3's defaults with 8 environments, except ``n_steps=125`` and ``batch_size=100`` (one 1000-step rollout per
evaluation, the same budget as the others; SB3's 2048 x 8 steps would be 16k per rollout). Returns on the 50 fixed
initial states: deterministic every ``--eval-every`` steps; at the end also the stochastic return (the policy's own
noise), which is what a variance residual shapes.

    python -m benchmarks.residual_exploration [--steps 10000] [--eval-every 1000] [--seeds 0 1 2] [--plot]
    python -m benchmarks.residual_exploration --report FILE [FILE ...] [--plot]   # merge runs made in separate processes
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env

from benchmarks.common import curve_parser, evaluate_on_starts, mean_std, plot_curves, write_json
from benchmarks.steering_pendulum import make_agent
from sb3_flow import VarianceResidualPolicy, VarianceResidualSACPolicy, set_torch_threads
from sb3_flow.experiments import PENDULUM_PIPELINE, STEERING_SAC, pretrained_base, returns_on_starts, steering_wrapper

ENV_ID = PENDULUM_PIPELINE.env_id
METHODS = ("dsrl", "residual", "variance_sac", "variance_ppo")
WRAPPER = {"dsrl": "dsrl", "residual": "residual", "variance_sac": "residual", "variance_ppo": "residual"}
VARIANCE_POLICY_KWARGS: dict[str, Any] = {"learn_mean": True, "log_std_init": -1.0}


def make_model(method: str, base: Any, seed: int, residual_scale: float) -> BaseAlgorithm:
    """An untrained agent of ``method`` acting through its wrapper around ``base``."""
    if method in ("dsrl", "residual"):
        return make_agent(method, base, seed, residual_scale)
    wrapper = steering_wrapper("residual", base.policy, vectorized=False, residual_scale=residual_scale)
    if method == "variance_ppo":
        env = make_vec_env(ENV_ID, n_envs=8, seed=seed, wrapper_class=wrapper)
        return PPO(
            VarianceResidualPolicy, env, n_steps=125, batch_size=100, policy_kwargs=VARIANCE_POLICY_KWARGS, seed=seed,
            device="cpu",
        )  # fmt: skip
    env = make_vec_env(ENV_ID, n_envs=1, seed=seed, wrapper_class=wrapper)
    policy_kwargs = {**VARIANCE_POLICY_KWARGS, "learn_mean": method != "variance_only_sac"}
    return SAC(VarianceResidualSACPolicy, env, policy_kwargs=policy_kwargs, seed=seed, device="cpu", **STEERING_SAC)


def evaluate(model: BaseAlgorithm, method: str, base: Any, residual_scale: float, deterministic: bool = True) -> float:
    """Return on the 50 fixed starts through the Vec form of the method's wrapper."""
    kwargs = {"residual_scale": residual_scale} if WRAPPER[method] == "residual" else {}
    wrap = steering_wrapper(WRAPPER[method], base.policy, **kwargs)
    return float(returns_on_starts(model, ENV_ID, 50, wrap=wrap, deterministic=deterministic).mean())


def main() -> None:
    parser = curve_parser(__doc__, steps=10_000, eval_every=1_000, out="benchmark_output/residual_exploration.json")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=[*METHODS, "variance_only_sac"])
    parser.add_argument("--variance-only", action="store_true", help="add SAC with learn_mean=False")
    parser.add_argument("--residual-scale", type=float, default=0.5)
    parser.add_argument("--plot", action="store_true", help="write docs/img/residual_exploration.png")
    parser.add_argument("--report", nargs="+", metavar="FILE", help="only merge and print these JSON outputs")
    args = parser.parse_args()
    if args.report:
        report([json.loads(Path(path).read_text()) for path in args.report], args.plot)
        return
    if args.variance_only and "variance_only_sac" not in args.methods:
        args.methods.append("variance_only_sac")
    WRAPPER["variance_only_sac"] = "residual"
    set_torch_threads(1)

    expert, _, base = pretrained_base(PENDULUM_PIPELINE)
    expert_return = evaluate_on_starts(expert, ENV_ID)
    bc_return = evaluate_on_starts(base.policy, ENV_ID)
    bc_stochastic = float(returns_on_starts(base.policy, ENV_ID, 50, deterministic=False).mean())
    print(f"expert {expert_return:.1f}, FlowBC base {bc_return:.1f} (stochastic {bc_stochastic:.1f})", flush=True)

    curves: dict[str, list] = {method: [] for method in args.methods}
    stochastic: dict[str, list[float]] = {method: [] for method in args.methods}
    seconds: dict[str, list[float]] = {method: [] for method in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            model = make_model(method, base, seed, args.residual_scale)
            curve = [(0, evaluate(model, method, base, args.residual_scale))]
            elapsed = 0.0
            while model.num_timesteps < args.steps:
                start = time.perf_counter()
                model.learn(args.eval_every, reset_num_timesteps=False)
                elapsed += time.perf_counter() - start
                curve.append((model.num_timesteps, evaluate(model, method, base, args.residual_scale)))
                print(f"  {method} seed {seed} {model.num_timesteps}: {curve[-1][1]:.1f}", flush=True)
            curves[method].append(curve)
            stochastic[method].append(evaluate(model, method, base, args.residual_scale, deterministic=False))
            seconds[method].append(elapsed)

    payload = {
        "args": vars(args),
        "expert": expert_return,
        "bc": bc_return,
        "bc_stochastic": bc_stochastic,
        "curves": curves,
        "stochastic_final": stochastic,
        "seconds": seconds,
    }
    write_json(args.out, payload)
    report([payload], args.plot)


def report(payloads: list[dict[str, Any]], plot: bool) -> None:
    """Merge runs (JSON outputs of separate processes, same base) into one table and, with ``plot``, one figure."""
    first = payloads[0]
    expert_return, bc_return, bc_stochastic = first["expert"], first["bc"], first["bc_stochastic"]
    curves: dict[str, list] = {}
    stochastic: dict[str, list] = {}
    seconds: dict[str, list] = {}
    for payload in payloads:
        for method in payload["curves"]:
            curves.setdefault(method, []).extend(payload["curves"][method])
            stochastic.setdefault(method, []).extend(payload["stochastic_final"][method])
            seconds.setdefault(method, []).extend(payload["seconds"][method])
    print(f"\n{ENV_ID}: expert {expert_return:.1f}, FlowBC base {bc_return:.1f} (stochastic {bc_stochastic:.1f})")
    gap = expert_return - bc_return
    print("| method | seeds | final deterministic return | gap closed | final stochastic return | train time (s) |")
    print("|---|---|---|---|---|---|")
    for method, runs in curves.items():
        finals = [curve[-1][1] for curve in runs]
        closed = 100 * (np.mean(finals) - bc_return) / gap
        print(
            f"| {method} | {len(runs)} | {mean_std(finals)} | {closed:.0f}% | {mean_std(stochastic[method])} | "
            f"{np.mean(seconds[method]):.0f} |"
        )
    if plot:
        plot_curves(
            curves, "docs/img/residual_exploration.png", "Residual exploration around a FlowBC base on Pendulum-v1",
            hlines={"expert": expert_return, "FlowBC base": bc_return},
        )  # fmt: skip


if __name__ == "__main__":
    main()
