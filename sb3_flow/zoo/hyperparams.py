"""
The Zoo's hyperparameter files as sb3-flow ships and reads them: packaged configs found by short name, and base-policy
paths resolved against the working directory once and recorded absolute, so that a run can be replayed from anywhere.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Keys whose value is a saved base policy's path: the algorithms' own option and the wrappers' keyword argument.
BASE_POLICY_KEY = "base_policy"
# Hyperparameters that list wrappers as the Zoo writes them: a name, or {name: {keyword arguments}}, or a list of those.
WRAPPER_KEYS = ("env_wrapper", "vec_env_wrapper")
CONFIG_SUFFIXES = (".yml", ".yaml", ".py")


class BasePolicyNotFoundError(FileNotFoundError):
    """A config names a base policy file that does not exist (raised before any environment is built)."""


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


def _absolute_base_policy(value: Any, where: str) -> Any:
    """An existing base policy file's absolute path (``.zip`` may be left out, as ``save`` writes it)."""
    if not isinstance(value, (str, os.PathLike)):
        return value  # an object given through --hyperparams: nothing to resolve
    for candidate in (os.fspath(value), f"{os.fspath(value)}.zip"):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise BasePolicyNotFoundError(
        f"{where}: base policy {os.fspath(value)!r} not found in {os.getcwd()} (a relative base_policy path is read "
        "from the working directory: run from the folder that holds it, or write an absolute path)"
    )


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


def resolve_base_policies(hyperparams: dict[str, Any], where: str) -> dict[str, Any]:
    """
    A copy of one environment's hyperparameters with every base policy path (the algorithm's ``base_policy`` and the
    wrappers' ``base_policy`` keyword) made absolute, so that the run's saved ``config.yml`` works from any folder.

    :param hyperparams: the hyperparameters (the mapping type is kept: the Zoo saves an ordered copy)
    :param where: the config file and entry, for the error message
    :raises BasePolicyNotFoundError: naming the config and the folder searched, when a base policy file is missing
    """
    resolved = copy.copy(hyperparams)
    if BASE_POLICY_KEY in resolved:
        resolved[BASE_POLICY_KEY] = _absolute_base_policy(resolved[BASE_POLICY_KEY], where)
    for key in WRAPPER_KEYS:
        if key in resolved:
            resolved[key] = _resolve_wrappers(resolved[key], f"{where}, {key}")
    return resolved


@contextlib.contextmanager
def absolute_base_policies() -> Iterator[None]:
    """
    While active, the Zoo's ``ExperimentManager.read_hyperparameters`` resolves base policy paths: it runs first in
    ``setup_experiment``, before any environment or log folder is made, and its second result is what the Zoo writes
    to the run's ``config.yml``.
    """
    from rl_zoo3.exp_manager import ExperimentManager

    original = ExperimentManager.read_hyperparameters

    def read_hyperparameters(self: ExperimentManager) -> tuple[dict[str, Any], dict[str, Any]]:
        hyperparams, saved_hyperparams = original(self)
        where = f"{self.config} ({self.env_name.gym_id} entry)"
        return resolve_base_policies(hyperparams, where), resolve_base_policies(saved_hyperparams, where)

    ExperimentManager.read_hyperparameters = read_hyperparameters  # type: ignore[method-assign]
    try:
        yield
    finally:
        ExperimentManager.read_hyperparameters = original  # type: ignore[method-assign]
