"""
Improving a flow by how it is sampled, with a critic (issue 13): IFQL's best-of-N (N in {1, 4, 32}), CFGRL across
its guidance weight w, critic-gradient guidance across lambda (with IFQL's IQL critic, and with a return head trained
on Monte-Carlo returns beside FlowBC: guidance from demonstrations alone), against FlowBC and FQL, on Pendulum-v1
datasets made here, the same gradient budget for every trained model.

Datasets (seed 0):
- ``noisy``: the scripted swing-up controller with Gaussian action noise 0.5, 50 episodes (the dataset of the FQL
  table in docs/benchmarks.md); zero-mean noise, so cloning alone nearly recovers the expert.
- ``mixed``: 15 episodes of that controller with noise 0.3 and 35 episodes of uniform random actions: most of the data
  is bad, and cloning imitates the mixture; a critic has to pick the good actions out.

Score: deterministic return on the same 50 fixed initial states, normalized as
``100 * (R - R_random) / (R_expert - R_random)`` (as ``benchmarks.offline_rl``). Every trained model: 128-128 networks,
batch 256, learning rate 3e-4, ``--steps`` gradient steps; the test-time knobs (N, w, lambda) are set on the trained
policies, without retraining.

    python -m benchmarks.critic_sampling --dataset mixed [--steps 5000] [--seeds 0 1 2] [--plot docs/img/...png]
    python -m benchmarks.critic_sampling --dataset mixed --methods FQL --fql-alpha 1 --seeds 0   # one model, a setting
    python -m benchmarks.critic_sampling --dataset mixed --plot out.png --plot-from a.json b.json  # merged runs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th

from benchmarks.common import mean_std, write_json
from benchmarks.offline_rl import RandomPolicy, ScriptedPolicy
from sb3_flow import (
    CFGRL,
    FQL,
    IFQL,
    CriticGuidedPolicy,
    Demonstrations,
    FlowBC,
    ReturnHeadFlowPolicy,
    collect_demonstrations,
    set_torch_threads,
)
from sb3_flow.experiments import pendulum_swing_up, returns_on_starts

N_SAMPLES = (1, 4, 32)
GUIDANCE_WEIGHTS = (0.0, 1.0, 1.5, 3.0, 5.0, 10.0)
GUIDANCE_SCALES = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


def make_dataset(name: str) -> Demonstrations:
    if name == "noisy":
        return collect_demonstrations("Pendulum-v1", pendulum_swing_up, 50, action_noise=0.5, seed=0)
    rng = np.random.default_rng(0)
    action_space = gym.make("Pendulum-v1").action_space
    expert = collect_demonstrations("Pendulum-v1", pendulum_swing_up, 15, action_noise=0.3, seed=0)
    random_actions = collect_demonstrations(
        "Pendulum-v1", lambda _obs: rng.uniform(action_space.low, action_space.high).astype(np.float32), 35, seed=1
    )
    return Demonstrations.concatenate([expert, random_actions])


class Scorer:
    def __init__(self) -> None:
        env = gym.make("Pendulum-v1")
        self.expert = float(returns_on_starts(ScriptedPolicy(), "Pendulum-v1").mean())
        self.random = float(returns_on_starts(RandomPolicy(env.action_space), "Pendulum-v1").mean())

    def __call__(self, policy: Any) -> float:
        value = float(returns_on_starts(policy, "Pendulum-v1").mean())
        return 100.0 * (value - self.random) / (self.expert - self.random)


METHODS = ("FlowBC", "FQL", "IFQL", "CFGRL", "return head")


def run_seed(
    demos: Demonstrations, steps: int, seed: int, scorer: Scorer, methods: tuple[str, ...], settings: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Scores of one seed: {method: {setting: score}}, and {model: train seconds} under "seconds"."""
    hidden = [128, 128]
    common = dict(learning_rate=3e-4, batch_size=256, seed=seed, device="cpu")
    offline = dict(policy_kwargs={"net_arch": hidden, "critic_net_arch": hidden}, **common)
    scores: dict[str, dict[str, float]] = {"seconds": {}}

    def timed(name: str, build: Any) -> Any:
        th.manual_seed(seed)
        start = time.perf_counter()
        model = build()
        scores["seconds"][name] = time.perf_counter() - start
        return model

    if "FlowBC" in methods:
        bc = timed(
            "FlowBC",
            lambda: FlowBC("MlpPolicy", "Pendulum-v1", demos, policy_kwargs={"net_arch": hidden}, **common).learn(steps),
        )
        scores["FlowBC"] = {"": scorer(bc.policy)}
    if "FQL" in methods:
        fql_settings = dict(alpha=settings.fql_alpha, normalize_q_loss=True)
        fql = timed("FQL", lambda: FQL("MlpPolicy", "Pendulum-v1", demos, **fql_settings, **offline).learn_offline(steps))
        scores[f"FQL (alpha={settings.fql_alpha:g})"] = {"": scorer(fql)}
    if "IFQL" in methods:
        ifql = timed("IFQL", lambda: IFQL("MlpPolicy", "Pendulum-v1", demos, **offline).learn_offline(steps))
        scores["IFQL"] = {}
        for n_samples in N_SAMPLES:
            ifql.policy.n_samples = n_samples
            scores["IFQL"][f"N={n_samples}"] = scorer(ifql)
        guided = CriticGuidedPolicy(ifql.bc_policy, ifql, guidance_scale=0.0, q_agg="min")
        scores["guidance (IQL critic)"] = {}
        for scale in GUIDANCE_SCALES:
            guided.guidance_scale = scale
            scores["guidance (IQL critic)"][f"lambda={scale:g}"] = scorer(guided)
    if "CFGRL" in methods:
        cfgrl_settings = dict(expectile=settings.cfgrl_expectile, advantage=settings.cfgrl_advantage)
        cfgrl = timed(
            "CFGRL", lambda: CFGRL("MlpPolicy", "Pendulum-v1", demos, **cfgrl_settings, **offline).learn_offline(steps)
        )
        name = "CFGRL" if settings.cfgrl_expectile == 0.9 else f"CFGRL (expectile {settings.cfgrl_expectile:g})"
        if settings.cfgrl_advantage == "monte_carlo":
            name = "CFGRL (Monte-Carlo advantage, RECAP-style)"
        scores[name] = {}
        for weight in GUIDANCE_WEIGHTS:
            cfgrl.policy.guidance_weight = weight
            scores[name][f"w={weight:g}"] = scorer(cfgrl)
    if "return head" in methods:
        head = timed(
            "FlowBC + return head",
            lambda: FlowBC(ReturnHeadFlowPolicy, "Pendulum-v1", demos, policy_kwargs={"net_arch": hidden}, **common).learn(
                steps
            ),
        )
        scores["guidance (return head)"] = {}
        for scale in GUIDANCE_SCALES:
            head.policy.guidance_scale = scale
            scores["guidance (return head)"][f"lambda={scale:g}"] = scorer(head.policy)
    return scores


def plot(results: dict[str, Any], path: str, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    cfgrl = np.array([[seed["CFGRL"][f"w={w:g}"] for w in GUIDANCE_WEIGHTS] for seed in results["per_seed"]])
    left.errorbar(GUIDANCE_WEIGHTS, cfgrl.mean(0), yerr=cfgrl.std(0), marker="o", capsize=3, label="CFGRL")
    fql_name = next(name for name in results["per_seed"][0] if name.startswith("FQL"))
    for name, axes in (("FlowBC", left), (fql_name, left), ("FlowBC", right)):
        value = np.mean([seed[name][""] for seed in results["per_seed"]])
        axes.axhline(value, linestyle="--", linewidth=1, color="gray" if name == "FlowBC" else "tab:red")
        axes.text(axes.get_xlim()[0], value, f" {name}", va="bottom", fontsize=8)
    left.set_xlabel("guidance weight w")
    left.set_ylabel("normalized score")
    left.set_title(f"CFGRL, Pendulum ({dataset} data)")
    scales = [max(scale, 3e-4) for scale in GUIDANCE_SCALES]  # lambda = 0 drawn at the left edge of the log axis
    for name in ("guidance (IQL critic)", "guidance (return head)"):
        values = np.array([[seed[name][f"lambda={s:g}"] for s in GUIDANCE_SCALES] for seed in results["per_seed"]])
        right.errorbar(scales, values.mean(0), yerr=values.std(0), marker="o", capsize=3, label=name)
    right.set_xscale("log")
    right.set_xlabel("guidance scale lambda (leftmost point: 0)")
    right.set_title("critic-gradient guidance")
    right.legend(fontsize=8)
    left.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("noisy", "mixed"), default="mixed")
    parser.add_argument("--steps", type=int, default=5000, help="gradient steps of every trained model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--fql-alpha", type=float, default=10.0, help="FQL's alpha (10: the Pendulum table's)")
    parser.add_argument("--cfgrl-expectile", type=float, default=0.9, help="CFGRL's IQL expectile (0.9: the authors')")
    parser.add_argument("--cfgrl-advantage", choices=("iql", "monte_carlo"), default="iql", help="CFGRL's advantage")
    parser.add_argument("--plot", default=None, help="PNG of score against w and against lambda (all methods only)")
    parser.add_argument("--out", default=None, help="JSON output (default benchmark_output/critic_sampling_<dataset>.json)")
    parser.add_argument(
        "--plot-from", nargs="+", default=None, help="only plot (to --plot) from these JSON outputs of the same seeds, merged"
    )
    args = parser.parse_args()
    if args.plot_from:
        runs = [json.loads(Path(path).read_text()) for path in args.plot_from]
        merged = [
            {k: v for run in runs for k, v in run["per_seed"][index].items()} for index in range(len(runs[0]["per_seed"]))
        ]
        plot({"per_seed": merged}, args.plot, args.dataset)
        return
    set_torch_threads(1)
    demos = make_dataset(args.dataset)
    scorer = Scorer()
    summary = demos.summary()
    print(f"dataset {args.dataset}: {summary['n_transitions']} transitions, episodes average {summary['mean_return']:.1f}")
    print(f"expert {scorer.expert:.1f}, random {scorer.random:.1f} on the 50 evaluation starts", flush=True)
    per_seed = []
    for seed in args.seeds:
        per_seed.append(run_seed(demos, args.steps, seed, scorer, tuple(args.methods), args))
        print(f"seed {seed}: {per_seed[-1]}", flush=True)

    print(f"\n| method | setting | score (mean ± std, {len(args.seeds)} seeds) | per seed |")
    print("|---|---|---|---|")
    for method, settings in per_seed[0].items():
        if method == "seconds":
            continue
        for setting in settings:
            values = [seed[method][setting] for seed in per_seed]
            print(f"| {method} | {setting or '-'} | {mean_std(values)} | {', '.join(f'{v:.1f}' for v in values)} |")
    seconds = {name: float(np.mean([seed["seconds"][name] for seed in per_seed])) for name in per_seed[0]["seconds"]}
    print("train seconds:", {name: round(value) for name, value in seconds.items()})
    results = {
        "settings": vars(args),
        "dataset": summary,
        "expert_return": scorer.expert,
        "random_return": scorer.random,
        "per_seed": per_seed,
    }
    write_json(args.out or f"benchmark_output/critic_sampling_{args.dataset}.json", results)
    if args.plot:
        plot(results, args.plot, args.dataset)


if __name__ == "__main__":
    main()
