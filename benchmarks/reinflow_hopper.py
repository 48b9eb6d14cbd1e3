"""
ReinFlow on Hopper-v5 (``sb3_flow.experiments.REINFLOW_HOPPER_FINETUNE``, the authors' settings with 8 environments)
from a FlowBC base trained on noisy-expert demonstrations (SAC expert 100k steps, 50 episodes
with action noise 0.3, FlowBC 20k gradient steps, K = 4), several seeds; deterministic returns on 50 fixed initial
states, the same for the expert, the base and every checkpoint (a paired comparison).
Target (ReinFlow issue): the return improves by >= 30% over the base within 300k environment steps.

    python -m benchmarks.reinflow_hopper [--steps 300000] [--seeds 0 1 2] [--noise learned]
    python -m benchmarks.reinflow_hopper --report FILE [FILE ...]   # merge seeds run in separate processes

The FlowBC base is saved to --base-file and reused by later runs (the seeds can then run as parallel processes).
--eval-every should be a multiple of the 4000-step rollout (8 environments x 500 steps).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import curve_parser, evaluate_on_starts, finetune_curves, mean_std, plot_curves, write_json
from sb3_flow import FlowBC, ReinFlow, set_torch_threads
from sb3_flow.experiments import HOPPER_PIPELINE, REINFLOW_HOPPER_FINETUNE, pretrained_base, train_expert

ENV_ID = HOPPER_PIPELINE.env_id
FINETUNE = REINFLOW_HOPPER_FINETUNE


def report(payloads: list[dict[str, Any]]) -> None:
    """Merge the curves of one or more JSON outputs (same expert and base) into one table and one plot."""
    expert_return, bc_return = payloads[0]["expert"], payloads[0]["bc"]
    curves: dict[str, list] = {}
    for payload in payloads:
        for noise, runs in payload["curves"].items():
            curves.setdefault(noise, []).extend(runs)
    print(f"\n{ENV_ID}: ReinFlow fine-tuning from FlowBC, {curves[next(iter(curves))][0][-1][0]} steps")
    print("| | runs | return on 50 fixed starts | improvement over the base | worst checkpoint |")
    print("|---|---|---|---|---|")
    print(f"| SAC expert (100k steps) | | {expert_return:.1f} | | |")
    print(f"| FlowBC base | | {bc_return:.1f} | 0% | |")
    for noise, runs in curves.items():
        finals = [curve[-1][1] for curve in runs]
        improvement = [(final - bc_return) / abs(bc_return) for final in finals]
        worst = [min(value for _, value in curve) for curve in runs]
        print(
            f"| ReinFlow, {noise} noise (mean ± std over seeds) | {len(runs)} | {mean_std(finals)} | "
            f"{100 * np.mean(improvement):.0f}% (per seed {', '.join(f'{100 * i:.0f}%' for i in improvement)}) "
            f"| {mean_std(worst)} |"
        )
    plot_curves(
        {f"ReinFlow, {noise} noise": runs for noise, runs in curves.items()},
        "docs/img/reinflow_hopper.png",
        "ReinFlow fine-tuning on Hopper-v5",
        hlines={"SAC expert": expert_return, "FlowBC base": bc_return, "+30%": bc_return + 0.3 * abs(bc_return)},
    )


def expert_and_base(bc_steps: int, base_file: str) -> tuple[Any, FlowBC]:
    """The SAC expert (trained once, cached) and the FlowBC base on its noisy demonstrations (saved to ``base_file``)."""
    pipeline = replace(HOPPER_PIPELINE, bc_steps=bc_steps)
    if Path(base_file).is_file():
        return train_expert(ENV_ID, "sac", pipeline.expert_steps, seed=pipeline.seed), FlowBC.load(base_file, device="cpu")
    expert, demos, base = pretrained_base(pipeline, n_flow_steps=4)
    print(demos.summary(), flush=True)
    base.save(base_file)
    return expert, base


def main() -> None:
    parser = curve_parser(__doc__, steps=300_000, eval_every=60_000, out="benchmark_output/reinflow_hopper.json")
    parser.add_argument("--noise", nargs="+", default=["learned"], choices=["learned", "fixed"])
    parser.add_argument("--bc-steps", type=int, default=HOPPER_PIPELINE.bc_steps)
    parser.add_argument("--learning-rate", type=float, default=FINETUNE["learning_rate"], help="actor learning rate")
    parser.add_argument("--n-epochs", type=int, default=FINETUNE["n_epochs"])
    parser.add_argument("--base-file", default="benchmark_output/reinflow_hopper_base.zip")
    parser.add_argument("--report", nargs="+", metavar="FILE", help="only merge and print these JSON outputs")
    args = parser.parse_args()
    if args.report:
        report([json.loads(Path(path).read_text()) for path in args.report])
        return
    set_torch_threads(1)

    expert, base = expert_and_base(args.bc_steps, args.base_file)
    expert_return = evaluate_on_starts(expert, ENV_ID)
    bc_return = evaluate_on_starts(base.policy, ENV_ID)
    print(f"expert {expert_return:.1f}, FlowBC base {bc_return:.1f}", flush=True)

    settings = {**FINETUNE, "learning_rate": args.learning_rate, "n_epochs": args.n_epochs}
    curves = {
        noise: finetune_curves(ReinFlow, ENV_ID, base, settings, args.seeds, args.steps, args.eval_every, noise=noise)
        for noise in args.noise
    }

    payload = {"args": vars(args), "settings": settings, "expert": expert_return, "bc": bc_return, "curves": curves}
    write_json(args.out, payload)
    report([payload])


if __name__ == "__main__":
    main()
