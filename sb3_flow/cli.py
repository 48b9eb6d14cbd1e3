"""The ``sb3-flow`` command: collect, pretrain, evaluate, demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import gymnasium as gym
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from sb3_flow.common.utils import set_torch_threads


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for small MLPs)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sb3-flow", description="Flow-matching policies for Stable-Baselines3")
    commands = parser.add_subparsers(dest="command", required=True)

    collect = commands.add_parser("collect", help="train (or load) an expert and collect demonstrations")
    collect.add_argument("--env", default="Pendulum-v1", help="gymnasium environment id")
    collect.add_argument(
        "--expert", default="sac", help="sac | ppo | td3 (trained, cached), scripted (Pendulum-v1), or a saved model path"
    )
    collect.add_argument("--expert-algo", default="sac", help="algorithm of a saved expert model")
    collect.add_argument("--expert-steps", type=int, default=20_000, help="training steps of a trained expert")
    collect.add_argument("--episodes", type=int, default=50, help="number of demonstration episodes")
    collect.add_argument("--action-noise", type=float, default=0.0, help="Gaussian action noise (fraction of half-width)")
    collect.add_argument("--cache-dir", default=None, help="expert cache folder (default ~/.cache/sb3-flow)")
    collect.add_argument("--out", default="demos.npz", help="output .npz")
    _add_common(collect)

    pretrain = commands.add_parser("pretrain", help="flow-matching behaviour cloning from a demonstrations file")
    pretrain.add_argument("--env", default="Pendulum-v1", help="gymnasium environment id")
    pretrain.add_argument("--demos", required=True, help="demonstrations .npz")
    pretrain.add_argument("--algo", choices=("flow_bc", "gaussian_bc"), default="flow_bc", help="BC variant")
    pretrain.add_argument("--steps", type=int, default=10_000, help="gradient steps")
    pretrain.add_argument("--n-flow-steps", type=int, default=10, help="integration steps K (flow_bc)")
    pretrain.add_argument("--batch-size", type=int, default=256, help="minibatch size")
    pretrain.add_argument("--learning-rate", type=float, default=1e-3, help="learning rate")
    pretrain.add_argument("--eval-freq", type=int, default=0, help="evaluate every N gradient steps (0: never)")
    pretrain.add_argument("--tensorboard-log", default=None, help="tensorboard folder")
    pretrain.add_argument("--device", default="auto", help="auto | cpu | cuda")
    pretrain.add_argument("--out", default="flow_bc.zip", help="output model zip")
    _add_common(pretrain)

    evaluate = commands.add_parser("evaluate", help="evaluate a saved model or policy")
    evaluate.add_argument("path", help="model zip or saved policy")
    evaluate.add_argument("--env", default="Pendulum-v1", help="gymnasium environment id")
    evaluate.add_argument("--algo", default=None, help="algorithm name (default: detected)")
    evaluate.add_argument("--episodes", type=int, default=10, help="evaluation episodes")
    evaluate.add_argument("--stochastic", action="store_true", help="sample actions (default: deterministic)")
    _add_common(evaluate)

    demo = commands.add_parser("demo", help="expert -> demonstrations -> Gaussian BC and Flow BC -> table and plot")
    demo.add_argument("--env", default="Pendulum-v1", help="gymnasium environment id")
    demo.add_argument("--expert", default="sac", help="sac | ppo | td3 | scripted | path of a saved model")
    demo.add_argument("--expert-algo", default="sac", help="algorithm of a saved expert model")
    demo.add_argument("--expert-steps", type=int, default=20_000, help="training steps of a trained expert")
    demo.add_argument("--episodes", type=int, default=50, help="demonstration episodes")
    demo.add_argument("--action-noise", type=float, default=0.3, help="demonstration action noise")
    demo.add_argument("--bc-steps", type=int, default=5_000, help="gradient steps of each BC run")
    demo.add_argument("--bc-learning-rate", type=float, default=1e-3, help="learning rate of each BC run")
    demo.add_argument("--finetune-steps", type=int, default=40_960, help="env steps of each fine-tuning row (0: none)")
    demo.add_argument("--steering-steps", type=int, default=2_000, help="env steps of each SAC-based steering row (0: none)")
    demo.add_argument("--eval-episodes", type=int, default=20, help="evaluation episodes per row")
    demo.add_argument("--workers", type=int, default=2, help="processes for the fine-tuning rows (1: sequential)")
    demo.add_argument("--cache-dir", default=None, help="expert cache folder")
    demo.add_argument("--out-dir", default="demo_output", help="output folder")
    _add_common(demo)
    return parser


def _collect(args: argparse.Namespace) -> int:
    from sb3_flow.common.demonstrations import collect_demonstrations
    from sb3_flow.demo import DemoConfig, get_expert

    config = DemoConfig(
        env_id=args.env,
        expert=args.expert,
        expert_algo=args.expert_algo,
        expert_steps=args.expert_steps,
        seed=args.seed,
        cache_dir=args.cache_dir,
    )
    expert = get_expert(config, progress_bar=True)
    demos = collect_demonstrations(args.env, expert, args.episodes, args.action_noise, seed=args.seed, progress_bar=True)
    demos.save(args.out)
    summary = demos.summary()
    print(
        f"wrote {args.out}: {summary['n_episodes']} episodes, {summary['n_transitions']} transitions, "
        f"return {summary['mean_return']:.1f} ± {summary['std_return']:.1f}"
    )
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from sb3_flow.bc import FlowBC, GaussianBC

    kwargs = dict(
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        eval_freq=args.eval_freq,
        tensorboard_log=args.tensorboard_log,
        seed=args.seed,
        device=args.device,
        verbose=1 if args.eval_freq else 0,
    )
    if args.algo == "flow_bc":
        model = FlowBC("MlpPolicy", args.env, args.demos, n_flow_steps=args.n_flow_steps, **kwargs)
    else:
        model = GaussianBC("MlpPolicy", args.env, args.demos, **kwargs)
    model.learn(args.steps, progress_bar=True)
    model.save(args.out)
    mean, std = model.evaluate(n_eval_episodes=10)
    print(f"wrote {args.out}; evaluation over 10 episodes: {mean:.1f} ± {std:.1f}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from sb3_flow.registry import load_any

    loaded, name = load_any(args.path, args.algo, device="cpu")
    env = Monitor(gym.make(args.env))
    env.reset(seed=args.seed)
    mean, std = evaluate_policy(loaded, env, n_eval_episodes=args.episodes, deterministic=not args.stochastic)
    print(f"{args.path} ({name}) on {args.env}, {args.episodes} episodes: {mean:.1f} ± {std:.1f}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sb3_flow.demo import DemoConfig, format_table, run_demo

    config = DemoConfig(
        env_id=args.env,
        expert=args.expert,
        expert_algo=args.expert_algo,
        expert_steps=args.expert_steps,
        n_episodes=args.episodes,
        action_noise=args.action_noise,
        bc_steps=args.bc_steps,
        bc_learning_rate=args.bc_learning_rate,
        finetune_steps=args.finetune_steps,
        steering_steps=args.steering_steps,
        n_eval_episodes=args.eval_episodes,
        n_workers=args.workers,
        seed=args.seed,
        out_dir=args.out_dir,
        cache_dir=args.cache_dir,
    )
    result = run_demo(config)
    print()
    print(format_table(result.rows))
    print(f"\nplot: {result.files['plot']}   results: {result.files['results']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sb3-flow`` console script."""
    args = _build_parser().parse_args(argv)
    set_torch_threads(args.threads)
    handlers = {"collect": _collect, "pretrain": _pretrain, "evaluate": _evaluate, "demo": _demo}
    try:
        return handlers[args.command](args)
    except (FileNotFoundError, ValueError, TypeError) as error:
        print(f"sb3-flow {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
