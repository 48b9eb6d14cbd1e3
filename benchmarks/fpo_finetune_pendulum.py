"""
FlowPPO fine-tuning of the standard Pendulum FlowBC base (``sb3_flow.experiments.PENDULUM_PIPELINE``: SAC expert 20k
steps, 50 demonstration episodes with action noise 0.3, FlowBC 5000 gradient steps) with
``sb3_flow.experiments.FLOW_PPO_PENDULUM_FINETUNE``, several seeds; returns on 50 fixed initial states, the same for
the expert, the base and every checkpoint (a paired comparison).
Targets (FlowPPO issue): close >= 50% of the BC -> expert gap within 100k environment steps, with no checkpoint
worse than BC by more than 20% of BC's return ("no early drop below 80% of BC").

    python -m benchmarks.fpo_finetune_pendulum [--steps 102400] [--seeds 0 1 2]
"""

from __future__ import annotations

from benchmarks.common import (
    curve_parser,
    evaluate_on_starts,
    finetune_curves,
    plot_curves,
    print_gap_row,
    print_gap_table_head,
    write_json,
)
from sb3_flow import FlowPPO, set_torch_threads
from sb3_flow.experiments import FLOW_PPO_PENDULUM_FINETUNE, PENDULUM_PIPELINE, pretrained_base

ENV_ID = PENDULUM_PIPELINE.env_id
FINETUNE = FLOW_PPO_PENDULUM_FINETUNE


def main() -> None:
    parser = curve_parser(__doc__, steps=102_400, eval_every=10_240, out="benchmark_output/fpo_finetune_pendulum.json")
    args = parser.parse_args()
    set_torch_threads(1)

    expert, _, base = pretrained_base(PENDULUM_PIPELINE)
    expert_return = evaluate_on_starts(expert, ENV_ID)
    bc_return = evaluate_on_starts(base.policy, ENV_ID)
    print(f"expert {expert_return:.1f}, FlowBC base {bc_return:.1f}", flush=True)

    curves = finetune_curves(FlowPPO, ENV_ID, base, FINETUNE, args.seeds, args.steps, args.eval_every)

    print(f"\n{ENV_ID}: FlowPPO fine-tuning from FlowBC, {args.steps} steps, seeds {args.seeds}")
    print_gap_table_head(expert_return, bc_return)
    label, limit = "FlowPPO fine-tuned (mean ± std over seeds)", f" (limit {1.2 * bc_return:.1f})"
    closed = print_gap_row(label, curves, expert_return, bc_return, worst_note=limit)
    plot_curves(
        {"FlowPPO from FlowBC": curves},
        "docs/img/fpo_finetune_pendulum.png",
        "FlowPPO fine-tuning on Pendulum-v1",
        hlines={"expert": expert_return, "FlowBC base": bc_return, "80% of BC": 1.2 * bc_return},
    )
    write_json(
        args.out,
        {
            "args": vars(args),
            "settings": FINETUNE,
            "expert": expert_return,
            "bc": bc_return,
            "curves": curves,
            "gap_closed": closed,
        },
    )


if __name__ == "__main__":
    main()
