"""
FlowPPO vs SB3 PPO from scratch on Hopper-v5, same environment steps, several seeds, steps/s measured in the same run.
(Pendulum's comparison is a compare config, ``compare_configs/fpo_vs_ppo_pendulum.yml``; Hopper's needs VecNormalize,
which compare configs do not set up.)

Both use 8 environments, VecNormalize and the same rollout / minibatch / epoch / learning-rate / network settings; PPO
keeps its own clip range 0.2; FlowPPO uses N = 8 draws and K = 10 steps with FPO++'s per-draw ratios and clip 0.2
(``--flow-ppo-kwargs`` overrides these, ``--methods FlowPPO`` runs FlowPPO alone: how the Hopper settings were chosen).
Returns are deterministic, on 50 fixed initial states (paired across methods).
Targets (FlowPPO issue): final return within 10% of PPO's; steps/s >= 0.8x PPO's.

    python -m benchmarks.fpo_vs_ppo --env Hopper-v5 --steps 163840 --eval-every 40960
    python -m benchmarks.fpo_vs_ppo --report FILE [FILE ...] [--plot PNG]   # merge runs made in separate processes
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from benchmarks.common import learn_with_curve, mean_std, plot_curves, write_json
from sb3_flow import FlowPPO, set_torch_threads

SETTINGS: dict[str, dict[str, Any]] = {
    "Hopper-v5": {
        "normalize": True,
        "shared": {
            "n_steps": 256,
            "batch_size": 256,
            "n_epochs": 10,
            "learning_rate": 3e-4,
            "gamma": 0.99,
            "gae_lambda": 0.95,
        },
        "arch": [256, 256],
        "ppo": {"clip_range": 0.2},
        # FPO++'s per-draw ratios with PPO's clip range: the fastest of the single-seed trials in docs/benchmarks.md
        "flow_ppo": {"ratio_mode": "per_sample", "clip_range": 0.2},
    },
}


def make_model(name: str, env_id: str, seed: int, flow_ppo_kwargs: dict[str, Any] | None = None) -> Any:
    settings = SETTINGS[env_id]
    env = make_vec_env(env_id, n_envs=8, seed=seed)
    if settings["normalize"]:
        env = VecNormalize(env)
    arch = settings["arch"]
    if name == "PPO":
        return PPO(
            "MlpPolicy", env, seed=seed, device="cpu", **settings["shared"], **settings["ppo"],
            policy_kwargs={"net_arch": {"pi": arch, "vf": arch}},
        )  # fmt: skip
    flow_ppo_kwargs = {"clip_range": 0.05, **settings.get("flow_ppo", {}), **(flow_ppo_kwargs or {})}
    return FlowPPO(
        "MlpPolicy", env, seed=seed, device="cpu", **settings["shared"], n_mc_samples=8, n_flow_steps=10,
        policy_kwargs={"net_arch": arch, "value_net_arch": arch}, **flow_ppo_kwargs,
    )  # fmt: skip


def report(payloads: list[dict[str, Any]], plot_path: str | None = None) -> None:
    """Print the table of one or several runs' JSON outputs (the same env and steps), seeds merged in order."""
    args = payloads[0]["args"]
    curves: dict[str, list] = {"PPO": [], "FlowPPO": []}
    speeds: dict[str, list[float]] = {"PPO": [], "FlowPPO": []}
    seeds = []
    for payload in payloads:
        run = payload["args"]
        if (run["env"], run["steps"], run.get("flow_ppo_kwargs")) != (args["env"], args["steps"], args.get("flow_ppo_kwargs")):
            raise ValueError("--report merges runs of one environment, step count and FlowPPO overrides only")
        seeds += run["seeds"]
        for name in curves:
            curves[name] += payload["curves"][name]
            speeds[name] += payload["steps_per_s"][name]
    methods = [name for name in curves if curves[name]]
    print(f"\n{args['env']}, {args['steps']} steps, seeds {seeds}, FlowPPO overrides {args.get('flow_ppo_kwargs', {})}")
    print("| method | final return (mean ± std over seeds) | per seed | train steps/s | steps/s vs PPO |")
    print("|---|---|---|---|---|")
    both = len(methods) == 2
    ratios = np.array(speeds["FlowPPO"]) / np.array(speeds["PPO"]) if both else None
    for name in methods:
        finals = [curve[-1][1] for curve in curves[name]]
        ratio = "1.00" if name == "PPO" else (f"{ratios.mean():.2f} ± {ratios.std():.2f}" if both else "-")
        per_seed = ", ".join(f"{value:.1f}" for value in finals)
        print(f"| {name} | {mean_std(finals)} | {per_seed} | {np.mean(speeds[name]):.0f} | {ratio} |")
    if both and plot_path is not None:
        plot_curves(curves, plot_path, f"FlowPPO vs PPO from scratch on {args['env']}, {args['steps']} steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v5", choices=sorted(SETTINGS))
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=20_480)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["PPO", "FlowPPO"], choices=["PPO", "FlowPPO"])
    parser.add_argument("--flow-ppo-kwargs", type=json.loads, default={}, help="JSON overrides of FlowPPO's settings")
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", default=None, help="curve figure (default: docs/img/fpo_vs_ppo_<env>.png for a full run)")
    parser.add_argument("--report", nargs="+", metavar="FILE", help="only merge and print these JSON outputs (--plot)")
    args = parser.parse_args()
    if args.report:
        report([json.loads(Path(path).read_text()) for path in args.report], args.plot)
        return
    set_torch_threads(1)

    curves: dict[str, list] = {"PPO": [], "FlowPPO": []}
    speeds: dict[str, list[float]] = {"PPO": [], "FlowPPO": []}
    for seed in args.seeds:
        for name in args.methods:
            print(f"{name} seed {seed}", flush=True)
            model = make_model(name, args.env, seed, args.flow_ppo_kwargs)
            curve, seconds = learn_with_curve(model, args.steps, args.eval_every, args.env)
            curves[name].append(curve)
            speeds[name].append(model.num_timesteps / seconds)

    stem = args.env.split("-")[0].lower()
    payload = {"args": vars(args), "curves": curves, "steps_per_s": speeds}
    full_run = len(args.methods) == 2 and args.out is None  # the docs' figure comes from the full comparison only
    report([payload], args.plot or (f"docs/img/fpo_vs_ppo_{stem}.png" if full_run else None))
    write_json(args.out or f"benchmark_output/fpo_vs_ppo_{stem}.json", payload)


if __name__ == "__main__":
    main()
