"""
The Zoo's hyperparameter files as sb3-flow ships and reads them: packaged configs found by short name; base-policy and
dataset paths resolved against the working directory once and recorded absolute, so that a run can be replayed from
anywhere; ``offline_steps`` turned into offline pretraining before the online run.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sb3_flow.common.utils import check_positive_int
from sb3_flow.registry import ZOO_ALGORITHMS, offline_algorithms

# Keys whose value is a saved base policy's path: the algorithms' own option and the wrappers' keyword argument.
BASE_POLICY_KEY = "base_policy"
# The offline dataset (a Demonstrations .npz) of the algorithms that learn from one (FQL, FBRAC, IFQL, CFGRL:
# ``sb3_flow.registry.offline_algorithms``): their ``dataset=``.
DATASET_KEY = "dataset"
# Offline gradient steps before the online run: not a constructor argument, it becomes this callback (run first).
OFFLINE_STEPS_KEY = "offline_steps"
OFFLINE_PRETRAINING_CALLBACK = "sb3_flow.zoo.callbacks.OfflinePretraining"
# Hyperparameters that list wrappers as the Zoo writes them: a name, or {name: {keyword arguments}}, or a list of those.
WRAPPER_KEYS = ("env_wrapper", "vec_env_wrapper")
CONFIG_SUFFIXES = (".yml", ".yaml", ".py")


class ConfigPathNotFoundError(FileNotFoundError):
    """A config names a file (a base policy, a dataset) that does not exist (raised before any environment is built)."""


class BasePolicyNotFoundError(ConfigPathNotFoundError):
    """A config names a base policy file that does not exist (raised before any environment is built)."""


class DatasetNotFoundError(ConfigPathNotFoundError):
    """A config names a dataset file that does not exist (raised before any environment is built)."""


class ConfigValueError(ValueError):
    """A hyperparameter sb3-flow reads has a value, or is given to an algorithm, it cannot be used with."""


def config_dir() -> Path:
    """Folder of the packaged YAML hyperparameter files (``sb3_flow/zoo/configs``, shipped as package data)."""
    return Path(__file__).resolve().parent / "configs"


def packaged_configs() -> list[str]:
    """Short names of the packaged configs (``flow_ppo``, ``sac_dsrl``, ...)."""
    return sorted(path.stem for path in config_dir().glob("*.yml"))


def resolve_config_file(value: str) -> str:
    """
    The file ``--conf-file value`` means: an existing file as given; else a packaged config named ``value`` (with or
    without ``.yml``, or as ``zoo_configs/<name>.yml``, the clone's folder, from any working directory); else, for a
    value without a file suffix, the Python module the Zoo imports hyperparameters from.

    :param value: what the user wrote
    :return: the path (or module name) to hand to the Zoo
    :raises FileNotFoundError: for a config file that is neither a file nor a packaged config
    """
    if os.path.isfile(value):
        return os.path.abspath(value)  # the run's args.yml then names the file wherever it is replayed from
    path = Path(value)
    if len(path.parts) == 1 or path.parent.name == "zoo_configs":
        name = path.name if path.suffix in (".yml", ".yaml") else f"{path.name}.yml"
        packaged = config_dir() / name
        if packaged.is_file():
            return str(packaged)
    if path.suffix in CONFIG_SUFFIXES:
        raise FileNotFoundError(
            f"No config file {value} in {os.getcwd()}, and no packaged config of that name "
            f"(packaged: {', '.join(packaged_configs())}; use e.g. --conf-file {packaged_configs()[0]})"
        )
    return value


def _absolute_file(value: Any, where: str, key: str, suffix: str, error: type[ConfigPathNotFoundError]) -> Any:
    """An existing file's absolute path (``suffix`` may be left out, as the writers add it)."""
    if not isinstance(value, (str, os.PathLike)):
        return value  # an object given through --hyperparams: nothing to resolve
    for candidate in (os.fspath(value), f"{os.fspath(value)}{suffix}"):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    what = key.replace("_", " ")
    raise error(
        f"{where}: {what} {os.fspath(value)!r} not found in {os.getcwd()} (a relative {key} path is read "
        "from the working directory: run from the folder that holds it, or write an absolute path)"
    )


def _absolute_base_policy(value: Any, where: str) -> Any:
    """An existing base policy file's absolute path (``.zip`` may be left out, as ``save`` writes it)."""
    return _absolute_file(value, where, BASE_POLICY_KEY, ".zip", BasePolicyNotFoundError)


def _resolve_wrappers(entry: Any, where: str) -> Any:
    """A wrapper entry with the ``base_policy`` of each ``{name: {kwargs}}`` made absolute."""
    if isinstance(entry, list):
        return [_resolve_wrappers(item, where) for item in entry]
    if isinstance(entry, dict):
        resolved = {}
        for name, kwargs in entry.items():
            if isinstance(kwargs, dict) and BASE_POLICY_KEY in kwargs:
                kwargs = {**kwargs, BASE_POLICY_KEY: _absolute_base_policy(kwargs[BASE_POLICY_KEY], f"{where}, {name}")}
            resolved[name] = kwargs
        return resolved
    return entry


def resolve_paths(hyperparams: dict[str, Any], where: str) -> dict[str, Any]:
    """
    A copy of one environment's hyperparameters with every base policy path (the algorithm's ``base_policy`` and the
    wrappers' ``base_policy`` keyword) and the ``dataset`` path made absolute, so that the run's saved ``config.yml``
    works from any folder.

    :param hyperparams: the hyperparameters (the mapping type is kept: the Zoo saves an ordered copy)
    :param where: the config file and entry, for the error message
    :raises ConfigPathNotFoundError: naming the config and the folder searched, when a base policy or dataset file is
        missing
    """
    resolved = copy.copy(hyperparams)
    if BASE_POLICY_KEY in resolved:
        resolved[BASE_POLICY_KEY] = _absolute_base_policy(resolved[BASE_POLICY_KEY], where)
    if DATASET_KEY in resolved:
        resolved[DATASET_KEY] = _absolute_file(resolved[DATASET_KEY], where, DATASET_KEY, ".npz", DatasetNotFoundError)
    for key in WRAPPER_KEYS:
        if key in resolved:
            resolved[key] = _resolve_wrappers(resolved[key], f"{where}, {key}")
    return resolved


def zoo_offline_algorithms() -> tuple[str, ...]:
    """The Zoo's algorithms that take a ``dataset`` and learn offline (the registry's list, as the Zoo names them)."""
    return tuple(name for name in offline_algorithms() if name in ZOO_ALGORITHMS)


def check_offline_keys(hyperparams: dict[str, Any], algorithm: type | None, algo: str, where: str) -> None:
    """
    ``dataset`` and ``offline_steps`` only for an algorithm that takes a dataset and learns offline (FQL, FBRAC, IFQL,
    CFGRL): any other would fail later, after the environments are made, with a less direct message.

    :raises ConfigValueError: naming the config, the key and the algorithm
    """
    if algorithm is None:
        return
    takers = ", ".join(zoo_offline_algorithms())
    if DATASET_KEY in hyperparams and DATASET_KEY not in inspect.signature(algorithm).parameters:
        raise ConfigValueError(f"{where}: {algo} takes no {DATASET_KEY} (the algorithms that learn from one: {takers})")
    if OFFLINE_STEPS_KEY in hyperparams and not callable(getattr(algorithm, "learn_offline", None)):
        raise ConfigValueError(f"{where}: {algo} does not learn offline, so {OFFLINE_STEPS_KEY} cannot apply ({takers} do)")


def with_offline_pretraining(hyperparams: dict[str, Any], where: str) -> dict[str, Any]:
    """
    A copy of one environment's hyperparameters where ``offline_steps: N`` has become the first callback,
    :class:`~sb3_flow.zoo.callbacks.OfflinePretraining` with ``n_gradient_steps=N`` (``learn_offline(N)`` when the
    online run starts, in ``train`` and in every ``tune`` trial); 0 removes the key and adds nothing. The hyperparameters
    the Zoo saves keep ``offline_steps`` as written.

    :param hyperparams: the hyperparameters the model is built from
    :param where: the config file and entry, for the error message
    :raises ConfigValueError: for a count that is not an integer >= 0
    """
    if OFFLINE_STEPS_KEY not in hyperparams:
        return hyperparams
    resolved = copy.copy(hyperparams)
    steps = resolved.pop(OFFLINE_STEPS_KEY)
    if isinstance(steps, float) and steps.is_integer():
        steps = int(steps)  # YAML reads 1e6 as a float
    try:
        steps = check_positive_int(steps, OFFLINE_STEPS_KEY, minimum=0)
    except ValueError as error:
        raise ConfigValueError(f"{where}: {error}") from None
    if steps:
        callbacks = resolved.get("callback") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        resolved["callback"] = [{OFFLINE_PRETRAINING_CALLBACK: {"n_gradient_steps": steps, "verbose": 1}}, *callbacks]
    return resolved


@contextlib.contextmanager
def sb3_flow_hyperparameters() -> Iterator[None]:
    """
    While active, the Zoo's ``ExperimentManager.read_hyperparameters`` resolves base policy and dataset paths, checks
    the offline keys and turns ``offline_steps`` into its callback: it runs first in ``setup_experiment``, before any
    environment or log folder is made, and its second result is what the Zoo writes to the run's ``config.yml``.
    """
    from rl_zoo3.exp_manager import ExperimentManager
    from rl_zoo3.utils import ALGOS

    original = ExperimentManager.read_hyperparameters

    def read_hyperparameters(self: ExperimentManager) -> tuple[dict[str, Any], dict[str, Any]]:
        hyperparams, saved_hyperparams = original(self)
        where = f"{self.config} ({self.env_name.gym_id} entry)"
        check_offline_keys(hyperparams, ALGOS.get(self.algo), self.algo, where)
        hyperparams = with_offline_pretraining(resolve_paths(hyperparams, where), where)
        return hyperparams, resolve_paths(saved_hyperparams, where)

    ExperimentManager.read_hyperparameters = read_hyperparameters  # type: ignore[method-assign]
    try:
        yield
    finally:
        ExperimentManager.read_hyperparameters = original  # type: ignore[method-assign]
