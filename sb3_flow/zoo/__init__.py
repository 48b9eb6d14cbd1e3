"""
RL-Zoo integration: sb3-flow's algorithms and Optuna samplers registered into rl_zoo3, and ``python -m sb3_flow.zoo``.

``register()`` adds them to ``rl_zoo3.ALGOS`` and to the Zoo's hyperparameter samplers and converters; it must run
before the Zoo's argparse builds its ``--algo`` choices, which is what ``python -m sb3_flow.zoo`` (and the
``sb3-flow-zoo`` console script) does. The packaged YAML files (``sb3_flow/zoo/configs``, one per algorithm, keyed by
environment id) are used by default and can be named by their short name (``--conf-file sac_dsrl``). While ``train``
and ``tune`` read a config, base-policy and ``dataset`` paths are made absolute and ``offline_steps`` becomes offline
pretraining before the online run (``sb3_flow.zoo.hyperparams``, ``sb3_flow.zoo.callbacks``).
"""

from __future__ import annotations

import contextlib
import runpy
import sys
from collections.abc import Callable
from typing import Any

from sb3_flow.registry import ZOO_ALGORITHMS, zoo_algorithms
from sb3_flow.zoo.hyperparams import (
    ConfigPathNotFoundError,
    ConfigValueError,
    config_dir,
    packaged_configs,
    resolve_config_file,
    sb3_flow_hyperparameters,
)
from sb3_flow.zoo.samplers import SAMPLERS

__all__ = [
    "COMMANDS",
    "ZOO_ALGORITHMS",
    "config_dir",
    "main",
    "packaged_configs",
    "register",
    "with_config_file",
    "zoo_algorithms",
]

# The Zoo's entry points offered here, with one line of help each. Left out: record_training (it starts
# `python -m rl_zoo3.record_video` in a subprocess, where sb3-flow's algorithms are not registered), and the Hugging
# Face hub commands (push_to_hub, load_from_hub, benchmark), since nothing here downloads or uploads.
COMMANDS: dict[str, str] = {
    "train": "train an agent; an sb3-flow algorithm reads its packaged config unless --conf-file is given",
    "tune": "train --optimize-hyperparameters: Optuna search; --n-trials counts per process, --max-total-trials caps all",
    "enjoy": "run a trained agent from a log folder (-f logs), with the wrappers and normalization it was trained with",
    "record_video": "record a video of a trained agent (-f logs; needs rendering: pygame for classic control)",
    "plot_train": "plot the training episode returns of runs (-a ALGO -e ENV -f logs)",
    "all_plots": "plot and tabulate the evaluations of several runs (-a ALGOS -e ENVS -f FOLDERS)",
    "plot_from_file": "plots from the file all_plots writes (-i FILE)",
}
CONF_FILE_OPTIONS = ("--conf-file", "-conf")


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


def _option_index(argv: list[str], *names: str) -> tuple[int, bool] | None:
    """(index of the option's value, whether it is written ``--name=value``), or None when the option is absent."""
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                return index + 1, False
            if arg.startswith(f"{name}="):
                return index, True
    return None


def _option_value(argv: list[str], *names: str) -> str | None:
    found = _option_index(argv, *names)
    if found is None:
        return None
    index, inline = found
    return argv[index].split("=", 1)[1] if inline else argv[index]


def with_config_file(argv: list[str]) -> list[str]:
    """
    The Zoo arguments with the config file resolved: a packaged config given by short name (``--conf-file sac_dsrl``)
    becomes its path, and an sb3-flow algorithm without ``--conf-file`` gets its packaged ``<algo>.yml``.

    :param argv: the arguments after the command
    :raises FileNotFoundError: for a config file that is neither a file nor a packaged config
    """
    argv = list(argv)
    found = _option_index(argv, *CONF_FILE_OPTIONS)
    if found is None:
        algo = _option_value(argv, "--algo")
        return [*argv, "--conf-file", str(config_dir() / f"{algo}.yml")] if algo in ZOO_ALGORITHMS else argv
    index, inline = found
    value = _option_value(argv, *CONF_FILE_OPTIONS)
    assert value is not None
    resolved = resolve_config_file(value)
    argv[index] = f"{argv[index].split('=', 1)[0]}={resolved}" if inline else resolved
    return argv


def usage() -> str:
    """The help of ``python -m sb3_flow.zoo``."""
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: python -m sb3_flow.zoo {{{','.join(COMMANDS)}}} [rl_zoo3 arguments]",
        "",
        "The RL-Zoo's commands with sb3-flow's algorithms registered "
        f"({', '.join(ZOO_ALGORITHMS)}; also the Zoo's own, e.g. sac with an sb3-flow env_wrapper).",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()),
        "",
        f"packaged configs (--conf-file NAME, from any folder): {', '.join(packaged_configs())}",
        "A command's own options: python -m sb3_flow.zoo COMMAND --help",
    ]
    return "\n".join(lines)


def _entry_point(command: str) -> Callable[[], Any]:
    """The Zoo's function behind a command (imported here: the plots need seaborn, enjoy needs requests)."""
    if command in ("train", "tune"):
        from rl_zoo3.train import train

        return train
    if command == "enjoy":
        from rl_zoo3.enjoy import enjoy

        return enjoy
    if command == "record_video":
        return _record_video
    from rl_zoo3 import plots

    return getattr(plots, command)


def _record_video() -> None:
    # The Zoo's record_video is a script body under `if __name__ == "__main__"`, not a function; its globals are dropped.
    runpy.run_module("rl_zoo3.record_video", run_name="__main__")


def _zoo_arguments(command: str, rest: list[str]) -> list[str]:
    """The arguments the Zoo's entry point gets for a command."""
    if command not in ("train", "tune"):
        return rest
    rest = with_config_file(rest)
    if command == "tune" and not {"-optimize", "--optimize-hyperparameters"} & set(rest):
        rest.append("--optimize-hyperparameters")
    return rest


def main(argv: list[str] | None = None) -> int:
    """
    ``python -m sb3_flow.zoo COMMAND [Zoo arguments]``; see :data:`COMMANDS`.

    :param argv: the arguments (default: ``sys.argv[1:]``)
    :return: the exit status: 0 on success, 2 for a usage error, a missing package, config or base policy file
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        problem = f"unknown command {argv[0]!r}" if argv else "a command is required"
        print(f"{usage()}\n\npython -m sb3_flow.zoo: error: {problem}", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    try:
        register()
        entry_point = _entry_point(command)
        rest = _zoo_arguments(command, rest)
    except (ImportError, FileNotFoundError) as error:
        print(f"python -m sb3_flow.zoo {command}: error: {_missing_package_hint(error)}", file=sys.stderr)
        return 2
    saved_argv = sys.argv
    sys.argv = [f"sb3_flow.zoo {command}", *rest]
    # Only train and tune read a config's hyperparameters (paths made absolute, offline_steps as a callback); the other
    # commands replay the run's saved config.yml.
    hyperparameters = sb3_flow_hyperparameters() if command in ("train", "tune") else contextlib.nullcontext()
    try:
        with hyperparameters:
            entry_point()
        return 0
    except (ConfigPathNotFoundError, ConfigValueError) as error:
        print(f"python -m sb3_flow.zoo {command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv


def _missing_package_hint(error: Exception) -> str:
    """The error, with the extra to install when a package is missing."""
    if isinstance(error, ModuleNotFoundError):
        return f"this command needs the package {error.name!r}: pip install 'sb3-flow[zoo]'"
    return str(error)
