"""
Offline-to-online on Pendulum-v1: FQL pretrained offline on a noisy expert's data, then trained online on the same
replay buffer, against SB3's SAC from scratch with the same online budget and the same networks.

Dataset: the scripted swing-up controller, ``--episodes`` episodes with action noise ``--action-noise``, seed 0 (as
``benchmarks/offline_rl.py``). FQL: ``--offline-steps`` gradient steps, then ``--steps`` environment steps with one
gradient step each (FQL's online phase); SAC: ``--steps`` environment steps with SB3's defaults. Both with ``--hidden``
hidden layers and batch 256. Every ``--eval-every`` environment steps, both are evaluated deterministically on the
same 50 fixed initial states (before the first online step too, where FQL shows its offline result).

    python -m benchmarks.fql_offline_to_online [--steps 10000] [--offline-steps 5000] [--seeds 0 1 2]
"""

from __future__ import annotations

import time
from typing import Any

from stable_baselines3 import SAC

from benchmarks.common import curve_parser, learn_with_curve, mean_std, plot_curves, write_json
from sb3_flow import FQL, collect_demonstrations, set_torch_threads
from sb3_flow.experiments import pendulum_swing_up

ENV_ID = "Pendulum-v1"


def main() -> None:
    parser = curve_parser(__doc__, steps=10_000, eval_every=1_000, out="benchmark_output/fql_offline_to_online.json")
    parser.add_argument("--offline-steps", type=int, default=5_000, help="FQL's offline gradient steps")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--action-noise", type=float, default=0.5)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--alpha", type=float, default=3.0, help="FQL's alpha (normalize_q_loss on)")
    parser.add_argument("--plot", default="docs/img/fql_offline_to_online_pendulum.png")
    args = parser.parse_args()
    set_torch_threads(1)

    demos = collect_demonstrations(ENV_ID, pendulum_swing_up, args.episodes, action_noise=args.action_noise, seed=0)
    curves: dict[str, list[list[tuple[int, float]]]] = {"FQL (offline, then online)": [], "SAC from scratch": []}
    seconds: dict[str, list[float]] = {name: [] for name in curves}
    for seed in args.seeds:
        fql = FQL(
            "MlpPolicy", ENV_ID, dataset=demos, alpha=args.alpha, normalize_q_loss=True, batch_size=256, seed=seed,
            policy_kwargs={"net_arch": args.hidden, "critic_net_arch": args.hidden}, device="cpu",
        )  # fmt: skip
        start = time.perf_counter()
        fql.learn_offline(args.offline_steps)
        offline_seconds = time.perf_counter() - start
        sac = SAC("MlpPolicy", ENV_ID, batch_size=256, policy_kwargs={"net_arch": args.hidden}, seed=seed, device="cpu")
        models: dict[str, Any] = {"FQL (offline, then online)": fql, "SAC from scratch": sac}
        for name, model in models.items():
            curve, train_seconds = learn_with_curve(model, args.steps, args.eval_every, ENV_ID)
            curves[name].append(curve)
            seconds[name].append(train_seconds + (offline_seconds if model is fql else 0.0))
            print(f"{name} seed {seed}: {curve[0][1]:.1f} -> {curve[-1][1]:.1f}", flush=True)

    print(f"\n| method | start of online phase | after {args.steps} env steps | per seed (end) | train time (s) |")
    print("|---|---|---|---|---|")
    for name, runs in curves.items():
        first = [run[0][1] for run in runs]
        last = [run[-1][1] for run in runs]
        per_seed = ", ".join(f"{value:.1f}" for value in last)
        print(f"| {name} | {mean_std(first)} | {mean_std(last)} | {per_seed} | {sum(seconds[name]) / len(runs):.0f} |")
    plot_curves(curves, args.plot, f"{ENV_ID}: FQL offline ({args.offline_steps} gradient steps) then online vs SAC")
    write_json(args.out, {"settings": vars(args), "dataset": demos.summary(), "curves": curves, "seconds": seconds})


if __name__ == "__main__":
    main()
