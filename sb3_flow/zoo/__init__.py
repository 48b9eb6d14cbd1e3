"""RL-Zoo integration: sb3-flow's algorithms and Optuna samplers registered into rl_zoo3.

``register()`` adds them to ``rl_zoo3.ALGOS`` and to the Zoo's hyperparameter samplers and converters; it must run
before the Zoo's argparse builds its ``--algo`` choices, which is what ``python -m sb3_flow.zoo`` (and the
``sb3-flow-zoo`` console script) does. The YAML files in ``zoo_configs/`` (one per algorithm, keyed by environment
id) are used by default.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sb3_flow.zoo.samplers import SAMPLERS

ZOO_ALGORITHMS = ("flow_ppo", "reinflow", "dsrl_na")


def zoo_algorithms() -> dict[str, type]:
    """sb3-flow algorithms offered to the Zoo, by Zoo name."""
    from sb3_flow.dsrl import DSRLNA
    from sb3_flow.fpo import FlowPPO
    from sb3_flow.reinflow import ReinFlow

    return {"flow_ppo": FlowPPO, "reinflow": ReinFlow, "dsrl_na": DSRLNA}


def register() -> None:
    """Add sb3-flow's algorithms, samplers and converters to rl_zoo3 (idempotent)."""
    try:
        from rl_zoo3 import hyperparams_opt, utils
    except ImportError as error:
        raise ImportError("the RL-Zoo integration needs rl_zoo3 and optuna: pip install 'sb3-flow[zoo]'") from error
    # The Zoo modules imported these dicts by name, so they are updated in place.
    utils.ALGOS.update(zoo_algorithms())
    for name, (sampler, converter) in SAMPLERS.items():
        hyperparams_opt.HYPERPARAMS_SAMPLER[name] = sampler
        hyperparams_opt.HYPERPARAMS_CONVERTER[name] = converter
    # DSRL-NA is SAC in the noise space: SAC's search space applies as it is.
    hyperparams_opt.HYPERPARAMS_SAMPLER["dsrl_na"] = hyperparams_opt.HYPERPARAMS_SAMPLER["sac"]
    hyperparams_opt.HYPERPARAMS_CONVERTER["dsrl_na"] = hyperparams_opt.HYPERPARAMS_CONVERTER["sac"]


def config_dir() -> Path:
    """Folder of the YAML hyperparameter files: ``zoo_configs/`` of a clone, or of the installed data files."""
    candidates = [Path(__file__).resolve().parents[2] / "zoo_configs", Path(sys.prefix) / "zoo_configs"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"zoo_configs/ not found (looked in {', '.join(map(str, candidates))})")


def _option_value(argv: list[str], *names: str) -> str | None:
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                return argv[index + 1]
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    return None


def default_config_args(argv: list[str]) -> list[str]:
    """``--conf-file zoo_configs/<algo>.yml`` for an sb3-flow algorithm when the user named no config file."""
    algo = _option_value(argv, "--algo")
    if algo in ZOO_ALGORITHMS and _option_value(argv, "--conf-file", "-conf") is None:
        return ["--conf-file", str(config_dir() / f"{algo}.yml")]
    return []


def main(argv: list[str] | None = None) -> Any:
    """
    ``python -m sb3_flow.zoo train|enjoy|tune [Zoo arguments]``.

    ``tune`` is ``train --optimize-hyperparameters``; several ``tune`` processes given the same
    ``--storage study.log --study-name NAME`` share one Optuna journal and split the trials.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("train", "enjoy", "tune")
    if not argv or argv[0] not in commands:
        print(f"usage: python -m sb3_flow.zoo {{{','.join(commands)}}} [rl_zoo3 arguments]", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    register()
    # rl_zoo3.cli imports seaborn for its plots; the train and enjoy entry points do not need it.
    if command == "enjoy":
        from rl_zoo3.enjoy import enjoy as entry_point
    else:
        from rl_zoo3.train import train as entry_point

        rest = rest + default_config_args(rest)
        if command == "tune" and not {"-optimize", "--optimize-hyperparameters"} & set(rest):
            rest.append("--optimize-hyperparameters")
    saved_argv = sys.argv
    sys.argv = [f"sb3_flow.zoo {command}", *rest]
    try:
        return entry_point()
    finally:
        sys.argv = saved_argv
