"""The ``sb3-flow`` command: collect, dataset, pretrain, offline, evaluate, distill, demo, compare, compare-report."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from sb3_flow.common.critics import check_expectile
from sb3_flow.common.experts import EXPERT_ALGOS, expert_cache_path
from sb3_flow.common.files import existing_file, with_suffix_if_missing
from sb3_flow.common.utils import check_finite_number, check_policy_matches_env, check_positive_int, set_torch_threads
from sb3_flow.compare.stats import DEFAULT_BOOTSTRAP_SEED, DEFAULT_REPS
from sb3_flow.demo import DEMO_METHODS, DemoConfig
from sb3_flow.experiments import PENDULUM_PIPELINE
from sb3_flow.registry import SB3_FLOW_ALGORITHMS, all_algorithms, offline_algorithms

DEFAULT_ENV = "Pendulum-v1"
# The algorithms that learn from a dataset and a critic, offline then online (`sb3-flow offline --algo`): the
# registry's FlowOffPolicyAlgorithm subclasses (fql, fbrac, ifql, cfgrl), which the offline command builds alike.
OFFLINE_ALGORITHMS = offline_algorithms()
# `offline` options that only some algorithms take, by their argparse dest, which is the constructor argument they set.
# Which algorithms take one is read from the constructors (see offline_algorithms_taking), so that the help and the
# errors follow the algorithms' own signatures.
ALGORITHM_OPTIONS = ("alpha", "normalize_q_loss", "expectile", "n_samples", "guidance_weight")
# `evaluate`'s test-time knobs, by their dest, which is the policy attribute they set, with what has that attribute (for
# the help and for the error when the loaded policy lacks it).
POLICY_KNOBS: dict[str, str] = {
    "n_samples": "a policy that draws N actions and keeps the best by Q: IFQL, a saved BestOfNPolicy, or CFGRL (best-of-N "
    "on top of its guidance)",
    "guidance_weight": "a classifier-free-guided flow: CFGRL, a saved ConditionalFlowPolicy",
    "guidance_scale": "a critic-gradient-guided flow: a FlowBC model trained with ReturnHeadFlowPolicy, a saved "
    "ReturnHeadFlowPolicy or CriticGuidedPolicy",
}
# How `distill` names the ways a steered agent reaches the environment (SteeredPolicy.method).
STEERING_LABELS = {
    "dsrl": "in its base's noise space (DSRL)",
    "residual": "by a residual on its base's action",
    "direct": "in the environment's own action space, around its own base",
}
# What a user can cause with a wrong argument, file or environment: reported in one line, never as a traceback.
# (Anything else is a bug in sb3-flow and keeps its traceback.)
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # missing files, an output path under a regular file, permissions
    ValueError,  # unreadable or foreign files, mismatched spaces or --algo
    TypeError,
    ImportError,  # an optional package the command needs
    EOFError,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
    FloatingPointError,  # the NaN guards of training
    gym.error.Error,  # unknown environment ids, missing environment dependencies
)


# ----- argument types: a bad number is an argparse error naming the option, before anything runs -----


def _number_type(parse: Callable[[str], Any], check: Callable[[Any], Any], expected: str) -> Callable[[str], Any]:
    """
    An argparse ``type``: parse the text, then check it with sb3-flow's shared checks.

    :param parse: ``int`` or ``float``
    :param check: raises ValueError / TypeError for a value out of range
    :param expected: what a valid value is, for the message ("a positive integer")
    """

    def convert(text: str) -> Any:
        try:
            return check(parse(text))
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None

    convert.__name__ = expected  # argparse names the type in some messages
    return convert


positive_int = _number_type(int, lambda value: check_positive_int(value, "value"), "a positive integer")
non_negative_int = _number_type(int, lambda value: check_positive_int(value, "value", minimum=0), "an integer >= 0")
positive_float = _number_type(
    float, lambda value: check_finite_number(value, "value", minimum=0.0, strict=True), "a finite number > 0"
)
non_negative_float = _number_type(
    float, lambda value: check_finite_number(value, "value", minimum=0.0), "a finite number >= 0"
)
finite_float = _number_type(float, lambda value: check_finite_number(value, "value"), "a finite number")
expectile_float = _number_type(float, check_expectile, "a number in (0, 1)")


def _check_fraction(value: float) -> float:
    value = check_finite_number(value, "value", minimum=0.0, strict=True)
    if value > 1.0:
        raise ValueError(f"expected a fraction in (0, 1], got {value}")
    return value


fraction_float = _number_type(float, _check_fraction, "a number in (0, 1]")


def offline_algorithms_taking(option: str) -> tuple[str, ...]:
    """
    The algorithms of ``sb3-flow offline`` whose constructor takes ``option`` (e.g. ``alpha``: fql, fbrac).

    :param option: a constructor argument, as the option's argparse dest
    """
    return tuple(name for name in OFFLINE_ALGORITHMS if option in inspect.signature(SB3_FLOW_ALGORITHMS[name]).parameters)


def _only(option: str) -> str:
    """The end of an algorithm-specific option's help: which algorithms take it."""
    return f" [{', '.join(offline_algorithms_taking(option))} only]"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, or a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


# ----- OGBench names: a short name (cube-single) or a full single-task dataset name -----

# OGBench's default task of each manipulation environment (the task its `...-singletask-v0` ids evaluate, set in
# ogbench/manipspace/envs/*_env.py where reward_task_id is 0), which the FQL paper reports as each environment's task.
OGBENCH_DEFAULT_TASKS: dict[str, int] = {
    "cube-single": 2,
    "cube-double": 2,
    "cube-triple": 2,
    "cube-quadruple": 2,
    "scene": 2,
    "puzzle-3x3": 4,
    "puzzle-4x4": 4,
    "puzzle-4x5": 2,
    "puzzle-4x6": 2,
}
OGBENCH_N_TASKS = 5  # every OGBench manipulation environment has evaluation tasks 1..5
OGBENCH_DATASET_TYPES = ("play", "noisy")
# The single-task environment id a gymnasium user would write (registered by `import ogbench`): the same environment.
_OGBENCH_TASK_ENV_ID = re.compile(r"(?P<env>[a-z0-9x-]+?)-singletask(?:-task(?P<task>\d+))?-v0")


def ogbench_dataset_name(name: str, task: int | None = None, dataset_type: str | None = None) -> str | None:
    """
    The full OGBench single-task dataset name that ``name`` means, or None when it is no OGBench name (a gymnasium id).

    - a short name, ``cube-single``, ``scene``, ``puzzle-3x3``, ... (:data:`OGBENCH_DEFAULT_TASKS`): the ``play``
      dataset (or ``dataset_type``) of OGBench's default task of that environment (or ``task``), e.g.
      ``cube-single`` -> ``cube-single-play-singletask-task2-v0``, ``puzzle-3x3`` -> ``...-task4-v0``;
    - a single-task environment id, ``cube-single-singletask-task3-v0``: the same environment, named by its
      ``play`` (or ``dataset_type``) dataset;
    - a full dataset name, ``cube-single-play-singletask-task2-v0``: as it is (it names its own task and type).

    :param name: what the user wrote
    :param task: the evaluation task (1..5) of a short name
    :param dataset_type: "play" or "noisy" for a short name or an environment id (default: "play")
    :raises ValueError: for an OGBench-looking name sb3-flow cannot use, a task out of range, or ``task`` /
        ``dataset_type`` given with a full name that already says them
    """
    from sb3_flow.common.ogbench import parse_ogbench_name

    if task is not None and not 1 <= task <= OGBENCH_N_TASKS:
        raise ValueError(f"--task must be one of the OGBench tasks 1..{OGBENCH_N_TASKS}, got {task}")
    if dataset_type is not None and dataset_type not in OGBENCH_DATASET_TYPES:
        raise ValueError(f"the dataset type must be one of {OGBENCH_DATASET_TYPES}, got {dataset_type!r}")
    found = _OGBENCH_TASK_ENV_ID.fullmatch(name)
    if name in OGBENCH_DEFAULT_TASKS or (found is not None and found["env"] in OGBENCH_DEFAULT_TASKS):
        env = name if found is None else found["env"]
        if found is not None and found["task"] is not None:
            if task is not None and task != int(found["task"]):
                raise ValueError(f"{name} names task {found['task']}; --task {task} contradicts it")
            task = int(found["task"])
        task = OGBENCH_DEFAULT_TASKS[env] if task is None else task
        return f"{env}-{dataset_type or 'play'}-singletask-task{task}-v0"
    if "singletask" not in name.split("-"):
        if task is not None or dataset_type is not None:
            raise ValueError(
                f"{name} is no OGBench name: --task and the dataset type apply to OGBench names "
                f"({', '.join(OGBENCH_DEFAULT_TASKS)}, or full single-task dataset names)"
            )
        return None
    parsed = parse_ogbench_name(name)  # a ValueError names what is wrong with it
    if task is not None or (dataset_type is not None and dataset_type != parsed.dataset_type):
        raise ValueError(f"{name} is a full OGBench dataset name: it sets the task and the dataset type itself")
    return parsed.name


def _quiet_ogbench() -> None:
    """
    Silence the two warnings every OGBench session prints that say nothing about the user's run: glfw's (no display,
    while nothing is rendered) and gymnasium's on OGBench's float64 action-space bounds cast to float32.
    """
    warnings.filterwarnings("ignore", message=r".*The DISPLAY environment variable is missing")
    warnings.filterwarnings("ignore", message=r".*Box (low|high)'s precision lowered by casting to float32")


def _add_ogbench_task(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        type=positive_int,
        default=None,
        help=f"OGBench evaluation task 1..{OGBENCH_N_TASKS} of a short OGBench name (default: OGBench's default task, "
        "4 for puzzle-3x3 and puzzle-4x4, 2 for the others)",
    )


# ----- the parser -----


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (1 is fastest for small MLPs)")


def _add_expert(parser: argparse.ArgumentParser, expert_steps: int) -> None:
    parser.add_argument(
        "--expert",
        default="sac",
        help=f"{' | '.join(EXPERT_ALGOS)} (trained once, then loaded from the cache), scripted (the Pendulum-v1 "
        "controller), or the path of a saved SB3 model",
    )
    parser.add_argument("--expert-algo", choices=sorted(EXPERT_ALGOS), default="sac", help="algorithm of a saved expert model")
    parser.add_argument("--expert-steps", type=positive_int, default=expert_steps, help="training steps of a trained expert")
    parser.add_argument(
        "--cache-dir", default=None, help="trained-expert cache folder (default: $SB3_FLOW_CACHE or ~/.cache/sb3-flow)"
    )


def _add_collect(commands: Any) -> None:
    collect = commands.add_parser(
        "collect", help="train (or load) an expert and collect demonstrations", formatter_class=_HelpFormatter
    )
    collect.add_argument("--env", default=DEFAULT_ENV, help="gymnasium environment id")
    _add_expert(collect, PENDULUM_PIPELINE.expert_steps)
    collect.add_argument("--episodes", type=positive_int, default=50, help="number of demonstration episodes")
    collect.add_argument(
        "--action-noise", type=non_negative_float, default=0.0, help="Gaussian action noise (fraction of the half-width)"
    )
    collect.add_argument("--out", default="demos.npz", help="output .npz")
    _add_common(collect)


def _add_pretrain(commands: Any) -> None:
    pretrain = commands.add_parser(
        "pretrain", help="flow-matching behaviour cloning from a demonstrations file", formatter_class=_HelpFormatter
    )
    pretrain.add_argument("--env", default=DEFAULT_ENV, help="gymnasium environment id")
    pretrain.add_argument("--demos", required=True, help="demonstrations .npz")
    pretrain.add_argument("--algo", choices=("flow_bc", "gaussian_bc"), default="flow_bc", help="BC variant")
    pretrain.add_argument("--steps", type=positive_int, default=10_000, help="gradient steps")
    pretrain.add_argument("--n-flow-steps", type=positive_int, default=10, help="integration steps K (flow_bc)")
    pretrain.add_argument("--batch-size", type=positive_int, default=256, help="minibatch size")
    pretrain.add_argument("--learning-rate", type=positive_float, default=1e-3, help="learning rate")
    pretrain.add_argument("--eval-freq", type=non_negative_int, default=0, help="evaluate every N gradient steps (0: never)")
    pretrain.add_argument("--tensorboard-log", default=None, help="tensorboard folder")
    pretrain.add_argument("--device", default="auto", help="auto | cpu | cuda")
    pretrain.add_argument("--out", default="flow_bc.zip", help="output model zip")
    _add_common(pretrain)


def _add_dataset(commands: Any) -> None:
    dataset = commands.add_parser(
        "dataset",
        help="generate an offline RL dataset: OGBench manipulation data from its scripted oracles, made here",
        formatter_class=_HelpFormatter,
    )
    dataset.add_argument("source", choices=("ogbench",), help="the generator")
    dataset.add_argument(
        "name",
        help=f"a short name ({', '.join(OGBENCH_DEFAULT_TASKS)}: OGBench's default task, play data) or a full "
        "single-task dataset name (cube-single-play-singletask-task2-v0)",
    )
    _add_ogbench_task(dataset)
    dataset.add_argument(
        "--dataset-type",
        choices=OGBENCH_DATASET_TYPES,
        default=None,
        help="play: the noisy plan oracle, several random tasks per episode (the FQL paper's data); noisy: the closed-loop "
        "oracle with action noise and random actions (default: play, or the full name's)",
    )
    dataset.add_argument(
        "--episodes",
        type=positive_int,
        required=True,
        help="episodes (the authors' datasets: 1000 for cube-single, cube-double, scene, puzzle-3x3 and puzzle-4x4, "
        "3000 for cube-triple and puzzle-4x5, 5000 for cube-quadruple and puzzle-4x6)",
    )
    dataset.add_argument(
        "--episode-length", type=positive_int, default=None, help="transitions per episode (default: 1000, the authors')"
    )
    dataset.add_argument(
        "--noise", type=non_negative_float, default=None, help="the oracle's noise level (default: the authors' 0.1)"
    )
    dataset.add_argument("--out", default=None, help="output .npz (default: <full dataset name>.npz)")
    _add_common(dataset)


def _add_offline(commands: Any) -> None:
    offline = commands.add_parser(
        "offline",
        help="offline RL from a dataset file (FQL, FBRAC, IFQL or CFGRL), then optional online fine-tuning on the same buffer",
        formatter_class=_HelpFormatter,
    )
    offline.add_argument(
        "--algo",
        choices=OFFLINE_ALGORITHMS,
        default="fql",
        help="fql: FQL's one-step policy; fbrac: its backprop-through-time baseline; ifql: a BC flow, IQL critics and "
        "best-of-N; cfgrl: a flow conditioned on IQL advantages, sampled with guidance",
    )
    offline.add_argument(
        "--env",
        default=DEFAULT_ENV,
        help="gymnasium environment id, or an OGBench name (short, e.g. cube-single, or a full single-task dataset name; "
        "evaluated by success rate)",
    )
    _add_ogbench_task(offline)
    offline.add_argument(
        "--dataset", required=True, help="dataset .npz with rewards and terminations (sb3-flow collect or dataset)"
    )
    offline.add_argument(
        "--steps",
        type=non_negative_int,
        default=10_000,
        help="offline gradient steps (0: online only, the dataset in the buffer)",
    )
    offline.add_argument(
        "--online-steps",
        type=non_negative_int,
        default=0,
        help="environment steps of online training afterwards, appended to the dataset's buffer (0: none)",
    )
    offline.add_argument(
        "--alpha",
        type=non_negative_float,
        default=None,
        help="FQL's distillation weight or FBRAC's BC weight (default: the algorithm's, FQL 10 and FBRAC 1; FQL's "
        "authors: 300 on cube and scene, 1000 on puzzle)" + _only("alpha"),
    )
    offline.add_argument(
        "--normalize-q-loss",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="divide the policy's Q term by mean |Q| (default: the algorithm's, FQL off and FBRAC on)"
        + _only("normalize_q_loss"),
    )
    offline.add_argument(
        "--expectile",
        type=expectile_float,
        default=None,
        help="IQL expectile of the value loss (default: the algorithm's, 0.9; IDQL: 0.7)" + _only("expectile"),
    )
    offline.add_argument(
        "--n-samples",
        type=positive_int,
        default=None,
        help="actions drawn per decision, the best by Q kept (default: the algorithm's, 32; a test-time knob: "
        "sb3-flow evaluate --n-samples)" + _only("n_samples"),
    )
    offline.add_argument(
        "--guidance-weight",
        type=finite_float,
        default=None,
        help="guidance weight w toward the optimal actions (0: BC, 1: conditioned; default: the algorithm's, 1; a "
        "test-time knob: sb3-flow evaluate --guidance-weight)" + _only("guidance_weight"),
    )
    offline.add_argument(
        "--q-agg",
        choices=("mean", "min"),
        default=None,
        help="aggregation of the critics in the TD target, or in IFQL's and CFGRL's value loss and action scores "
        "(default: the algorithm's, FQL and FBRAC mean, IFQL and CFGRL min)",
    )
    offline.add_argument(
        "--n-flow-steps",
        type=positive_int,
        default=None,
        help="integration steps K of the flow (default: the algorithm's, 10; CFGRL 16)",
    )
    offline.add_argument(
        "--net-arch",
        type=positive_int,
        nargs="+",
        default=None,
        help="hidden sizes of the flow and FQL's one-step policy (default: 512 512 512 512, FQL's)",
    )
    offline.add_argument(
        "--critic-net-arch",
        type=positive_int,
        nargs="+",
        default=None,
        help="hidden sizes of each Q network and of IFQL's and CFGRL's V network (default: --net-arch)",
    )
    offline.add_argument("--batch-size", type=positive_int, default=256, help="minibatch size")
    offline.add_argument("--learning-rate", type=positive_float, default=3e-4, help="learning rate")
    offline.add_argument(
        "--learning-starts", type=non_negative_int, default=0, help="online: random-action steps before the first update"
    )
    offline.add_argument(
        "--eval-freq",
        type=non_negative_int,
        default=0,
        help="evaluate every N gradient steps offline and every N environment steps online (0: only at the end)",
    )
    offline.add_argument("--eval-episodes", type=positive_int, default=10, help="episodes of each evaluation")
    offline.add_argument("--tensorboard-log", default=None, help="tensorboard folder")
    offline.add_argument("--device", default="auto", help="auto | cpu | cuda")
    offline.add_argument("--out", default=None, help="output model zip (default: <algo>.zip)")
    offline.add_argument(
        "--save-replay-buffer", default=None, help="also write the replay buffer (dataset and online transitions), a .pkl"
    )
    _add_common(offline)


def _add_evaluate(commands: Any) -> None:
    evaluate = commands.add_parser("evaluate", help="evaluate a saved model or policy", formatter_class=_HelpFormatter)
    evaluate.add_argument("path", help="model zip or saved policy")
    evaluate.add_argument(
        "--env",
        default=None,
        help="gymnasium environment id, or an OGBench name (short or full: success rate, as OGBench counts it) "
        f"(default: the Zoo run's, else {DEFAULT_ENV})",
    )
    _add_ogbench_task(evaluate)
    evaluate.add_argument(
        "--algo",
        choices=sorted(all_algorithms()),
        default=None,
        help="the algorithm that saved it (default: read from the file)",
    )
    evaluate.add_argument(
        "--config",
        default=None,
        help="an RL-Zoo run's <run>/<env>/config.yml: evaluate inside its env_wrapper, normalization and frame stacking, "
        "as the Zoo's enjoy does (default: the config next to a model in a Zoo run folder)",
    )
    evaluate.add_argument("--episodes", type=positive_int, default=10, help="evaluation episodes")
    evaluate.add_argument("--stochastic", action="store_true", help="sample actions (default: deterministic)")
    evaluate.add_argument(
        "--n-samples",
        type=positive_int,
        default=None,
        help=f"set policy.n_samples, N actions drawn per decision (default: as saved), on {POLICY_KNOBS['n_samples']}",
    )
    evaluate.add_argument(
        "--guidance-weight",
        type=finite_float,
        default=None,
        help=f"set policy.guidance_weight, w (default: as saved), on {POLICY_KNOBS['guidance_weight']}",
    )
    evaluate.add_argument(
        "--guidance-scale",
        type=finite_float,
        default=None,
        help=f"set policy.guidance_scale, lambda (default: as saved), on {POLICY_KNOBS['guidance_scale']}",
    )
    _add_common(evaluate)


def _add_distill(commands: Any) -> None:
    distill = commands.add_parser(
        "distill",
        help="distill a steered policy (DSRL, residual, DSRL-NA, best-of-N) back into one standalone flow policy",
        formatter_class=_HelpFormatter,
    )
    distill.add_argument(
        "path",
        help="the steered agent: a model zip saved by the RL-Zoo with a steering env_wrapper (sac_dsrl, sac_residual: its "
        "run's config.yml names the wrapper and the base), a DSRL-NA model zip, or a saved BestOfNPolicy / "
        "CriticGuidedPolicy",
    )
    distill.add_argument("--env", default=None, help=f"gymnasium environment id (default: the Zoo run's, else {DEFAULT_ENV})")
    distill.add_argument(
        "--config",
        default=None,
        help="an RL-Zoo run's <run>/<env>/config.yml, whose env_wrapper and normalization the agent acts through "
        "(default: the config next to a model in a Zoo run folder)",
    )
    distill.add_argument(
        "--algo",
        choices=sorted(all_algorithms()),
        default=None,
        help="the algorithm that saved it (default: read from the file)",
    )
    distill.add_argument("--episodes", type=positive_int, default=50, help="rollout episodes of the steered policy")
    distill.add_argument(
        "--stochastic",
        action="store_true",
        help="sample the agent's actions in the rollouts (default: deterministic; a variance residual needs it, best with "
        "--top-fraction or --min-return)",
    )
    selection = distill.add_mutually_exclusive_group()
    selection.add_argument(
        "--min-return", type=finite_float, default=None, help="keep the rollout episodes with at least this return"
    )
    selection.add_argument(
        "--top-fraction",
        type=fraction_float,
        default=None,
        help="keep this fraction of the rollout episodes, the best by return",
    )
    distill.add_argument(
        "--demonstrations", default=None, help="a demonstrations .npz to mix in (e.g. the base's own), as it is"
    )
    distill.add_argument("--steps", type=positive_int, default=5_000, help="FlowBC gradient steps")
    distill.add_argument(
        "--warm-start",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start from the base's weights (--no-warm-start: a fresh network of the base's architecture)",
    )
    distill.add_argument(
        "--n-flow-steps", type=positive_int, default=None, help="integration steps K of the flow (default: the base's)"
    )
    distill.add_argument("--batch-size", type=positive_int, default=256, help="minibatch size")
    distill.add_argument("--learning-rate", type=positive_float, default=3e-4, help="learning rate")
    distill.add_argument(
        "--eval-episodes",
        type=non_negative_int,
        default=10,
        help="afterwards, evaluate the steered policy and the distilled flow on the same episodes (0: no evaluation)",
    )
    distill.add_argument("--device", default="auto", help="auto | cpu | cuda (of the distilled flow's training)")
    distill.add_argument("--out", default="distilled.zip", help="output FlowBC model zip")
    _add_common(distill)


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="multimodal BC, then expert -> demonstrations -> Flow BC base -> a small comparison; table and figure",
        description="First panel: Gaussian BC and Flow BC on bimodal demonstrations. Then an expert, its noisy "
        "demonstrations and a Flow BC base, and a small comparison from that base (sb3-flow compare): each method "
        "on each seed, every agent, the base and the expert scored on the same fixed starts, scores normalized "
        "between the base (0) and the expert (1), 95% intervals over seeds. Needs rliable: pip install 'sb3-flow[compare]'.",
        formatter_class=_HelpFormatter,
    )
    defaults = DemoConfig()
    demo.add_argument("--env", default=defaults.env_id, help="gymnasium environment id")
    _add_expert(demo, defaults.expert_steps)
    demo.add_argument("--episodes", type=positive_int, default=defaults.n_episodes, help="demonstration episodes")
    demo.add_argument(
        "--action-noise", type=non_negative_float, default=defaults.action_noise, help="demonstration action noise"
    )
    demo.add_argument("--bc-steps", type=positive_int, default=defaults.bc_steps, help="gradient steps of the Flow BC base")
    demo.add_argument(
        "--bc-learning-rate", type=positive_float, default=defaults.bc_learning_rate, help="learning rate of the Flow BC base"
    )
    demo.add_argument(
        "--modes-steps",
        type=positive_int,
        default=defaults.modes_steps,
        help="gradient steps of Gaussian BC and Flow BC on the bimodal demonstrations (first panel)",
    )
    demo.add_argument(
        "--methods", nargs="+", choices=sorted(DEMO_METHODS), default=list(defaults.methods), help="the compared methods"
    )
    demo.add_argument("--budget", type=positive_int, default=defaults.budget, help="env steps of each method and seed")
    demo.add_argument("--seeds", nargs="+", type=non_negative_int, default=list(defaults.seeds), help="the comparison's seeds")
    demo.add_argument(
        "--eval-starts",
        type=positive_int,
        default=defaults.eval_starts,
        help="fixed initial states every agent, the base and the expert are scored on",
    )
    demo.add_argument("--eval-every", type=positive_int, default=defaults.eval_every, help="env steps between evaluations")
    demo.add_argument(
        "--workers",
        type=positive_int,
        default=defaults.n_workers,
        help="processes for the comparison's jobs, one torch thread each (1: one after the other)",
    )
    demo.add_argument("--reps", type=positive_int, default=defaults.reps, help="bootstrap replications of the intervals")
    demo.add_argument("--out-dir", "--out", dest="out_dir", default=defaults.out_dir, help="output folder")
    _add_common(demo)


def _add_report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=positive_int, default=DEFAULT_REPS, help="bootstrap replications of the statistics")
    parser.add_argument(
        "--bootstrap-seed", type=non_negative_int, default=DEFAULT_BOOTSTRAP_SEED, help="seed of the bootstrap (reproducible)"
    )


def _add_compare(commands: Any) -> None:
    compare = commands.add_parser(
        "compare",
        help="every method from one base, several seeds, rliable statistics (finished jobs are kept and skipped on a rerun)",
        description="Run a comparison config (docs/compare.md): one job per (method, seed), each writing its curve to "
        "OUT/jobs/; finished jobs are skipped on a rerun, failed ones rerun; then the report in OUT/report/. Exit status "
        "1 when a job failed (its traceback in OUT/jobs/<method>/seed_<seed>.error.json).",
        formatter_class=_HelpFormatter,
    )
    compare.add_argument("config", help="the comparison's YAML config (e.g. compare_configs/pendulum.yml)")
    compare.add_argument("--out", default=None, help="output folder (default: compare_output/<config name>)")
    compare.add_argument(
        "--launcher",
        choices=("local", "ray"),
        default="local",
        help="local: worker processes on this machine; ray: Ray tasks (pip install 'sb3-flow[ray]')",
    )
    compare.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help=f"jobs at a time, one torch thread each: local processes (1: one after the other in this process), or the "
        f"CPUs of the Ray instance started here (default: the CPUs, {os.cpu_count()})",
    )
    compare.add_argument(
        "--address", default=None, help="a running Ray cluster's address ('auto': the local one) [--launcher ray only]"
    )
    _add_report_options(compare)
    # No --seed (the config names the seeds) nor --threads (each job runs with one torch thread).
    compare.set_defaults(threads=1)


def _add_compare_report(commands: Any) -> None:
    report = commands.add_parser(
        "compare-report",
        help="the table and plots of a comparison's finished jobs, again (sb3-flow compare writes them too)",
        formatter_class=_HelpFormatter,
    )
    report.add_argument("out", help="the comparison's output folder")
    _add_report_options(report)
    report.set_defaults(threads=1)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sb3-flow",
        description="Flow-matching policies for Stable-Baselines3. Each command's options: sb3-flow COMMAND --help",
        formatter_class=_HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_collect, _add_dataset, _add_pretrain, _add_offline, _add_evaluate, _add_distill, _add_demo, _add_compare,
        _add_compare_report,
    ):  # fmt: skip
        add(commands)
    return parser


# ----- checks before any long work -----


def _check_output(path: str, option: str, folder: bool = False) -> None:
    """
    Fail before minutes of training when an output cannot be written: a parent that is a regular file, a file where a
    folder is wanted (or the reverse), a folder without write permission.

    :raises OSError: naming the option, the path and the obstacle
    """
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{option} {path} is a file, not a folder")
    if not folder and target.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder; give a file name")
    for parent in target.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"cannot write {option} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise PermissionError(f"cannot write {option} {path}: no write permission in {parent}")
            return


# ----- collect -----


def _describe_expert(args: argparse.Namespace) -> tuple[str, str]:
    """
    What ``get_expert`` is about to do, as (before, after) messages: train and cache an SB3 expert, load it from the
    cache, load a saved model, or use the scripted controller.
    """
    if args.expert == "scripted":
        return "", f"expert: the scripted {args.env} controller"
    algo = args.expert.lower()
    if algo not in EXPERT_ALGOS:
        return "", f"expert: {args.expert} (loaded as {args.expert_algo})"
    cache = expert_cache_path(args.env, algo, args.expert_steps, args.seed, args.cache_dir)
    if cache.is_file():
        return "", f"expert: loaded the cached {algo} expert from {cache}"
    return (
        f"expert: training a {algo} expert for {args.expert_steps} steps (once: it is then cached)",
        f"expert: trained a {algo} expert; cached at {cache} (reused for the same env, algorithm, steps and seed)",
    )


def _collect(args: argparse.Namespace) -> int:
    from sb3_flow.common.demonstrations import collect_demonstrations
    from sb3_flow.demo import get_expert

    _check_output(args.out, "--out")
    config = DemoConfig(
        env_id=args.env,
        expert=args.expert,
        expert_algo=args.expert_algo,
        expert_steps=args.expert_steps,
        seed=args.seed,
        cache_dir=args.cache_dir,
    )
    before, after = _describe_expert(args)
    if before:
        print(before)
    expert = get_expert(config, progress_bar=True)
    print(after)
    demos = collect_demonstrations(args.env, expert, args.episodes, args.action_noise, seed=args.seed, progress_bar=True)
    demos.save(args.out)
    summary = demos.summary()
    print(
        f"wrote {with_suffix_if_missing(args.out, '.npz')}: {summary['n_episodes']} episodes, "
        f"{summary['n_transitions']} transitions, return {summary['mean_return']:.1f} ± {summary['std_return']:.1f}"
    )
    return 0


# ----- dataset -----


def _dataset(args: argparse.Namespace) -> int:
    from sb3_flow.common.ogbench import collect_ogbench_dataset

    name = ogbench_dataset_name(args.name, args.task, args.dataset_type)
    if name is None:
        raise ValueError(
            f"{args.name} is no OGBench name: give a short name ({', '.join(OGBENCH_DEFAULT_TASKS)}) or a full "
            "single-task dataset name such as cube-single-play-singletask-task2-v0"
        )
    _quiet_ogbench()
    out = args.out or f"{name}.npz"
    _check_output(out, "--out")
    length = args.episode_length or 1000
    print(f"{args.name}: OGBench {name}, {args.episodes} episodes of {length} steps from its scripted oracles")
    options = {} if args.noise is None else {"noise": args.noise}
    data = collect_ogbench_dataset(
        name, n_episodes=args.episodes, episode_length=length, seed=args.seed, progress_bar=True, **options
    )
    path = data.save(out)
    solved = int(data.terminations.sum())
    print(
        f"wrote {path}: {len(data)} transitions, {data.n_episodes} episodes; the task is solved in {solved} rows "
        f"({solved / len(data):.1%})"
    )
    print(f"train on it: sb3-flow offline --algo fql --env {name} --dataset {path}")
    return 0


# ----- pretrain -----


def _pretrain(args: argparse.Namespace) -> int:
    from sb3_flow.bc import FlowBC, GaussianBC

    _check_output(args.out, "--out")
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
    print(f"wrote {with_suffix_if_missing(args.out, '.zip')}; evaluation over 10 episodes: {mean:.1f} ± {std:.1f}")
    return 0


# ----- offline -----


class _OGBenchSuccessInfo(gym.Wrapper):
    """Copies OGBench's ``info["success"]`` to ``info["is_success"]``, which SB3's EvalCallback logs as a success rate."""

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "success" in info:
            info = {**info, "is_success": bool(info["success"])}
        return obs, reward, terminated, truncated, info


def _make_env(env_id: str, ogbench_name: str | None) -> gym.Env:
    """The environment named on the command line: OGBench's for an OGBench name, else ``gym.make``."""
    if ogbench_name is None:
        return gym.make(env_id)
    from sb3_flow.common.ogbench import make_ogbench_env

    return _OGBenchSuccessInfo(make_ogbench_env(ogbench_name))


def _final_evaluation(model: BaseAlgorithm, args: argparse.Namespace, ogbench_name: str | None) -> str:
    """One line: the OGBench success rate (as OGBench counts it), else the mean return on a fresh environment."""
    episodes = args.eval_episodes
    if ogbench_name is not None:
        from sb3_flow.common.ogbench import ogbench_success_rate

        rate = ogbench_success_rate(model, ogbench_name, n_episodes=episodes, seed=args.seed)
        return f"success rate over {episodes} episodes: {rate:.0%}"
    env = BaseAlgorithm._wrap_env(gym.make(args.env), verbose=0, monitor_wrapper=True)
    env.seed(args.seed)
    try:
        mean, std = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True)
    finally:
        env.close()
    return f"evaluation over {episodes} episodes: {mean:.1f} ± {std:.1f}"


def _algorithm_options(args: argparse.Namespace) -> dict[str, Any]:
    """
    The constructor arguments the command line sets for ``--algo``: the options given (those left out keep the
    algorithm's own defaults, e.g. IFQL's ``q_agg="min"``).

    :raises ValueError: naming the option and the algorithms that take it, for an option ``--algo`` does not take
    """
    options: dict[str, Any] = {}
    for name in ALGORITHM_OPTIONS:
        value = getattr(args, name)
        if value is None:
            continue
        takers = offline_algorithms_taking(name)
        if args.algo not in takers:
            flag = f"--{'no-' if value is False else ''}{name.replace('_', '-')}"
            raise ValueError(f"{flag} is an option of --algo {' and '.join(takers)}; --algo {args.algo} does not take it")
        options[name] = value
    for name in ("q_agg", "n_flow_steps"):  # every algorithm's, with defaults of its own
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    return options


def _offline(args: argparse.Namespace) -> int:
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.monitor import Monitor

    from sb3_flow.common.demonstrations import Demonstrations

    if args.steps == 0 and args.online_steps == 0:
        raise ValueError("nothing to train: --steps and --online-steps are both 0")
    # Before the dataset is read: an option the algorithm does not take is a mistake in the command line, not a default.
    options = _algorithm_options(args)
    out = args.out or f"{args.algo}.zip"
    _check_output(out, "--out")
    if args.save_replay_buffer:
        _check_output(args.save_replay_buffer, "--save-replay-buffer")
    ogbench_name = ogbench_dataset_name(args.env, args.task)
    if ogbench_name is not None:
        _quiet_ogbench()
        if ogbench_name != args.env:
            print(f"{args.env}: OGBench {ogbench_name}")
    data = Demonstrations.load(args.dataset)
    summary = data.summary()
    print(f"dataset {args.dataset}: {summary['n_transitions']} transitions, {summary['n_episodes']} episodes")
    env = _make_env(args.env, ogbench_name)
    policy_kwargs: dict[str, Any] = {}
    if args.net_arch is not None:
        policy_kwargs["net_arch"] = list(args.net_arch)
    if args.critic_net_arch is not None or args.net_arch is not None:
        policy_kwargs["critic_net_arch"] = list(args.critic_net_arch or args.net_arch)
    model = SB3_FLOW_ALGORITHMS[args.algo](
        "MultiInputPolicy" if isinstance(env.observation_space, gym.spaces.Dict) else "MlpPolicy",
        env,
        dataset=data,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        learning_starts=args.learning_starts,
        policy_kwargs=policy_kwargs,
        tensorboard_log=args.tensorboard_log,
        verbose=1 if args.eval_freq else 0,
        seed=args.seed,
        device=args.device,
        **options,
    )
    eval_env = Monitor(_make_env(args.env, ogbench_name)) if args.eval_freq else None

    def evaluations() -> EvalCallback | None:
        # One per phase: offline it counts gradient steps, online environment steps.
        if eval_env is None:
            return None
        return EvalCallback(eval_env, eval_freq=args.eval_freq, n_eval_episodes=args.eval_episodes, verbose=1)

    try:
        if args.steps:
            model.learn_offline(args.steps, callback=evaluations(), progress_bar=True)
        if args.online_steps:
            model.learn(args.online_steps, callback=evaluations(), progress_bar=True)
    finally:
        if eval_env is not None:
            eval_env.close()
    model.save(out)
    print(
        f"wrote {with_suffix_if_missing(out, '.zip')}: {args.algo}, {model.n_offline_steps} offline gradient steps, "
        f"{model.num_timesteps} environment steps"
    )
    if args.save_replay_buffer:
        model.save_replay_buffer(args.save_replay_buffer)
        buffer = model.replay_buffer
        print(
            f"wrote {with_suffix_if_missing(args.save_replay_buffer, '.pkl')}: the replay buffer, {buffer.n_offline} "
            f"dataset and {buffer.n_online} online transitions"
        )
    print(_final_evaluation(model, args, ogbench_name))
    model.get_env().close()
    return 0


# ----- evaluate -----


def _zoo_run_config(model_path: str, config: str | None) -> Path | None:
    """
    The RL-Zoo config to evaluate with: ``--config``, else the one the Zoo writes next to a model it saved
    (``<run>/<env>.zip`` beside ``<run>/<env>/config.yml`` and ``args.yml``; ``best_model.zip`` and checkpoints beside the
    run's one such folder), else None.
    """
    if config is not None:
        return Path(existing_file(config, what="RL-Zoo run config (<run>/<env>/config.yml)"))
    model = Path(model_path)

    def is_run_folder(folder: Path) -> bool:
        return (folder / "config.yml").is_file() and (folder / "args.yml").is_file()

    if is_run_folder(model.parent / model.stem):
        return model.parent / model.stem / "config.yml"
    if model.name == "best_model.zip" or re.fullmatch(r"rl_model_\d+_steps\.zip", model.name):
        found = sorted(folder for folder in model.parent.iterdir() if folder.is_dir() and is_run_folder(folder))
        if len(found) > 1:
            names = ", ".join(str(folder / "config.yml") for folder in found)
            raise ValueError(f"{model.parent} holds several run configs ({names}): choose one with --config")
        return found[0] / "config.yml" if found else None
    return None


def _wrapper_names(hyperparams: dict[str, Any]) -> list[str]:
    """The env_wrapper entries of a Zoo config, by class name."""
    entries = hyperparams.get("env_wrapper") or []
    entries = entries if isinstance(entries, list) else [entries]
    return [(next(iter(entry)) if isinstance(entry, dict) else str(entry)).rsplit(".", 1)[-1] for entry in entries]


def _applied(hyperparams: dict[str, Any]) -> list[str]:
    """What a Zoo run applies around its environment: wrappers, normalization, frame stacking."""
    applied = [*_wrapper_names(hyperparams), *(["VecNormalize"] if hyperparams.get("normalize") else [])]
    if hyperparams.get("frame_stack"):
        applied.append(f"{hyperparams['frame_stack']} stacked frames")
    return applied


def _zoo_env(config: Path, env_id: str | None, seed: int) -> tuple[VecEnv, str, str]:
    """
    The environment an RL-Zoo run was trained in, built from its saved files by the Zoo's own ``create_test_env``
    (as ``enjoy`` does). The Zoo writes these files with Python-object YAML tags: they are read as the Zoo reads them
    (yaml's UnsafeLoader), so only evaluate runs you trust.

    :return: (the VecEnv, its environment id, a description of what was applied)
    """
    try:
        import yaml
        from rl_zoo3.utils import create_test_env, get_saved_hyperparams
    except ImportError as error:
        raise ImportError(
            f"{config} is an RL-Zoo run's config; evaluating with it needs rl_zoo3: pip install 'sb3-flow[zoo]'"
        ) from error
    stats_path = config.parent
    hyperparams, maybe_stats_path = get_saved_hyperparams(str(stats_path), norm_reward=False, test_mode=True)
    run_args: dict[str, Any] = {}
    if (stats_path / "args.yml").is_file():
        run_args = dict(yaml.load((stats_path / "args.yml").read_text(), Loader=yaml.UnsafeLoader))
    for module in run_args.get("gym_packages") or []:
        importlib.import_module(module)  # registers the run's environment id, as the run's --gym-packages did
    env_id = env_id or str(run_args.get("env") or DEFAULT_ENV)
    applied = _applied(hyperparams)
    env = create_test_env(
        env_id,
        n_envs=1,
        stats_path=maybe_stats_path,
        seed=seed,
        log_dir=None,
        should_render=False,
        hyperparams=hyperparams,
        env_kwargs=run_args.get("env_kwargs") or {},
    )
    return env, env_id, f"with {config}: {', '.join(applied) or 'no wrappers'}"


def _evaluation_env(args: argparse.Namespace, model_path: str) -> tuple[VecEnv, str, str]:
    """The environment to evaluate in, its id, and a note on what was applied to it."""
    config = _zoo_run_config(model_path, args.config)
    if config is not None:
        env, env_id, note = _zoo_env(config, args.env, args.seed)
    else:
        env_id = args.env or DEFAULT_ENV
        env, note = gym.make(env_id), "raw environment"
    # SB3's own wrapping (Monitor, DummyVecEnv, image transposition), as when a model is given an env.
    vec_env = BaseAlgorithm._wrap_env(env, verbose=0, monitor_wrapper=True)
    vec_env.seed(args.seed)
    return vec_env, env_id, note


def _check_spaces(loaded: Any, env: VecEnv, path: str, note: str) -> None:
    """A model or policy built for other spaces than the environment's is refused before it acts."""
    try:
        check_policy_matches_env(
            loaded.observation_space, loaded.action_space, env.observation_space, env.action_space, what="saved model"
        )
    except ValueError as error:
        hint = ""
        if note == "raw environment":
            hint = (
                " (name the model's environment with --env; a model trained inside an env_wrapper, e.g. with the Zoo's "
                "sac_dsrl or sac_residual config, is evaluated inside it: pass its run's <run>/<env>/config.yml with "
                "--config)"
            )
        raise ValueError(f"{path}: {error}{hint}") from error


def _evaluate_ogbench(args: argparse.Namespace, ogbench_name: str) -> int:
    """A model or policy's OGBench success rate, as OGBench counts it (``ogbench_success_rate``)."""
    from sb3_flow.common.ogbench import make_ogbench_env, ogbench_success_rate
    from sb3_flow.registry import load_any

    path = existing_file(args.path, ".zip", what="saved model or policy")
    config = _zoo_run_config(path, args.config)
    if config is not None:
        # A Zoo run trained on the raw OGBench environment (fql_offline.yml) is scored here; one trained inside
        # wrappers or normalization would be scored wrongly on the raw environment.
        try:
            from rl_zoo3.utils import get_saved_hyperparams
        except ImportError as error:
            raise ImportError(
                f"{config} is an RL-Zoo run's config; reading it needs rl_zoo3: pip install 'sb3-flow[zoo]'"
            ) from error
        applied = _applied(get_saved_hyperparams(str(config.parent), norm_reward=False, test_mode=True)[0])
        if applied:
            raise ValueError(
                f"{config}: the run applies {', '.join(applied)} around its environment, and an OGBench success rate "
                "is measured on the raw environment; evaluate the run without an OGBench --env"
            )
    loaded, name = load_any(path, args.algo, device="cpu")
    knobs = _set_policy_knobs(loaded, name, args)
    env = make_ogbench_env(ogbench_name)
    try:
        _check_spaces(loaded, env, path, "OGBench environment")
    finally:
        env.close()
    rate = ogbench_success_rate(
        loaded, ogbench_name, n_episodes=args.episodes, seed=args.seed, deterministic=not args.stochastic
    )
    print(f"{args.path} ({name}{knobs}) on OGBench {ogbench_name}, {args.episodes} episodes: success rate {rate:.0%}")
    return 0


def _set_policy_knobs(loaded: Any, name: str, args: argparse.Namespace) -> str:
    """
    Set the test-time knobs given on the command line (``--n-samples``, ...) on the loaded model's policy, or on the
    loaded policy itself; the policy's own setters check the values. Nothing is saved.

    :param loaded: what ``load_any`` returned
    :param name: the name it was loaded as
    :param args: the parsed arguments
    :return: the knobs as set, read back from the policy, for the printed line (", n_samples=4"; "" when none)
    :raises ValueError: naming the option and what has the attribute, when the policy lacks it
    """
    policy = loaded.policy if isinstance(loaded, BaseAlgorithm) else loaded
    owner = f"the {name} model's policy" if isinstance(loaded, BaseAlgorithm) else "the saved policy"
    settings = []
    for knob, expected in POLICY_KNOBS.items():
        value = getattr(args, knob)
        if value is None:
            continue
        option = f"--{knob.replace('_', '-')}"
        if not hasattr(policy, knob):
            raise ValueError(
                f"{option} sets policy.{knob}, which {owner} ({type(policy).__name__}) does not have; it applies to {expected}"
            )
        setattr(policy, knob, value)
        settings.append(f", {knob}={getattr(policy, knob):g}")
    return "".join(settings)


def _evaluate(args: argparse.Namespace) -> int:
    from sb3_flow.registry import load_any

    ogbench_name = ogbench_dataset_name(args.env, args.task) if args.env else None
    if args.task is not None and ogbench_name is None:
        raise ValueError("--task applies to an OGBench environment: name one with --env")
    if ogbench_name is not None:
        _quiet_ogbench()
        return _evaluate_ogbench(args, ogbench_name)
    path = existing_file(args.path, ".zip", what="saved model or policy")
    loaded, name = load_any(path, args.algo, device="cpu")
    knobs = _set_policy_knobs(loaded, name, args)
    env, env_id, note = _evaluation_env(args, path)
    _check_spaces(loaded, env, path, note)
    mean, std = evaluate_policy(loaded, env, n_eval_episodes=args.episodes, deterministic=not args.stochastic)
    print(f"{args.path} ({name}{knobs}) on {env_id}, {note}, {args.episodes} episodes: {mean:.1f} ± {std:.1f}")
    return 0


# ----- distill -----


def _distill(args: argparse.Namespace) -> int:
    from sb3_flow.bc import distill, steered_policy
    from sb3_flow.registry import load_any

    _check_output(args.out, "--out")
    path = existing_file(args.path, ".zip", what="steered agent (a model zip or a saved BestOfNPolicy)")
    agent, name = load_any(path, args.algo, device="cpu")
    env, env_id, note = _evaluation_env(args, path)
    flow_bc_kwargs: dict[str, Any] = {
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "device": args.device,
    }
    if args.n_flow_steps is not None:
        flow_bc_kwargs["n_flow_steps"] = args.n_flow_steps
    try:
        steered = steered_policy(agent, env, seed=args.seed)
    except (TypeError, ValueError) as error:
        hint = ""
        if note == "raw environment":
            hint = (
                " (a model trained inside a steering env_wrapper, e.g. with the Zoo's sac_dsrl or sac_residual config, is "
                "read with its run's <run>/<env>/config.yml: found next to the model in its run folder, or given with "
                "--config)"
            )
        raise type(error)(f"{path}: {error}{hint}") from error
    print(f"{args.path} ({name}) on {env_id}, {note}: steered {STEERING_LABELS[steered.method]}")
    model = distill(
        agent,
        env,
        n_episodes=args.episodes,
        n_gradient_steps=args.steps,
        deterministic=not args.stochastic,
        demonstrations=args.demonstrations,
        min_return=args.min_return,
        top_fraction=args.top_fraction,
        warm_start=args.warm_start,
        flow_bc_kwargs=flow_bc_kwargs,
        seed=args.seed,
        progress_bar=True,
        verbose=1,
    )
    model.save(args.out)
    print(
        f"wrote {with_suffix_if_missing(args.out, '.zip')}: a FlowBC model ({len(model.demonstrations)} transitions, "
        f"{args.steps} gradient steps{', warm-started from the base' if args.warm_start else ''}); its policy acts alone"
    )
    if args.eval_episodes:
        results = []
        for policy in (steered, model.policy):
            # The same episodes for both: the distilled flow's environment is the steered policy's original one.
            eval_env = model.get_env()
            eval_env.seed(args.seed)
            mean, std = evaluate_policy(policy, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
            results.append(f"{mean:.1f} ± {std:.1f}")
        print(f"evaluation over {args.eval_episodes} episodes: steered {results[0]}, distilled {results[1]}")
    return 0


# ----- demo -----


def _demo(args: argparse.Namespace) -> int:
    from sb3_flow.demo import check_demo_config, format_modes, format_table, run_demo

    _check_output(args.out_dir, "--out-dir", folder=True)
    config = DemoConfig(
        env_id=args.env,
        expert=args.expert,
        expert_algo=args.expert_algo,
        expert_steps=args.expert_steps,
        n_episodes=args.episodes,
        action_noise=args.action_noise,
        bc_steps=args.bc_steps,
        bc_learning_rate=args.bc_learning_rate,
        modes_steps=args.modes_steps,
        methods=tuple(args.methods),
        budget=args.budget,
        seeds=tuple(args.seeds),
        eval_starts=args.eval_starts,
        eval_every=args.eval_every,
        n_workers=args.workers,
        reps=args.reps,
        seed=args.seed,
        out_dir=args.out_dir,
        cache_dir=args.cache_dir,
    )
    check_demo_config(config)  # a missing extra or a bad setting, before the line that announces the expert
    before, after = _describe_expert(args)
    print(before or after)
    try:
        result = run_demo(config)
    except RuntimeError as error:  # every job of the comparison failed: their tracebacks are in files
        print(f"sb3-flow demo: {error}", file=sys.stderr)
        return 1
    if before:
        print(after)
    print()
    print(format_modes(result.modes))
    print()
    print(format_table(result.rows, result.normalized))
    print(
        f"\nscores on {config.eval_starts} fixed starts (the same for every agent, the base and the expert); "
        f"demo took {result.seconds['total']:.0f} s"
    )
    print(f"figure: {result.files['plot']}   results: {result.files['results']}   report: {result.files['compare_report']}")
    if result.failed:
        print(f"failed jobs (left out above): {', '.join(result.failed)}; see {Path(args.out_dir, 'compare', 'jobs')}")
        return 1
    return 0


# ----- compare -----


def _print_report(result: Any) -> None:
    print()
    print(result.markdown.split("\n\n![")[0])  # the tables, without the Markdown image links
    print(f"\nreport: {result.files['report']}   plots: {', '.join(result.files[name] for name in ('curves', 'profile'))}")


def _compare(args: argparse.Namespace) -> int:
    from sb3_flow.compare import compare

    out = args.out if args.out is not None else str(Path("compare_output", Path(args.config).stem))
    _check_output(out, "--out", folder=True)
    result = compare(
        args.config, out, launcher=args.launcher, workers=args.workers, address=args.address, reps=args.reps,
        bootstrap_seed=args.bootstrap_seed,
    )  # fmt: skip
    if result is None:
        return 1
    _print_report(result)
    return 1 if result.summary["failed"] else 0


def _compare_report(args: argparse.Namespace) -> int:
    from sb3_flow.compare import report

    _print_report(report(args.out, reps=args.reps, bootstrap_seed=args.bootstrap_seed))
    return 0


def _one_line(error: BaseException) -> str:
    """The error as one line (gymnasium's messages do not say they come from gymnasium)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return f"gymnasium {type(error).__name__}: {text}" if isinstance(error, gym.error.Error) else text


def main(argv: Sequence[str] | None = None) -> int:
    """
    Entry point of the ``sb3-flow`` console script.

    :param argv: the arguments (default: ``sys.argv[1:]``)
    :return: 0 on success, 2 for an expected failure (one line on stderr), 130 when interrupted
    """
    args = _build_parser().parse_args(argv)
    set_torch_threads(args.threads)
    handlers = {
        "collect": _collect,
        "dataset": _dataset,
        "pretrain": _pretrain,
        "offline": _offline,
        "evaluate": _evaluate,
        "distill": _distill,
        "demo": _demo,
        "compare": _compare,
        "compare-report": _compare_report,
    }
    try:
        return handlers[args.command](args)
    except EXPECTED_ERRORS as error:
        print(f"sb3-flow {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sb3-flow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
