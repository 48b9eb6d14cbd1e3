"""
The settings of a comparison (``sb3-flow compare CONFIG.yml``): one environment, one base, several methods, one budget,
several seeds and one evaluation protocol, read from YAML or a dict and checked before any job starts.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import gymnasium

from sb3_flow import experiments
from sb3_flow.common.files import existing_file
from sb3_flow.common.ogbench import register_ogbench_envs
from sb3_flow.common.utils import check_finite_number, check_positive_int
from sb3_flow.registry import all_algorithms

# Steering methods: an SB3 SAC agent acting through a wrapper around the frozen base (experiments.steering_wrapper).
STEERING_METHODS: dict[str, str] = {"sac_dsrl": "dsrl", "sac_residual": "residual"}
# The named pipelines a base can be built with (``base: {pipeline: pendulum}``).
PIPELINES: dict[str, experiments.PipelineSettings] = {
    "pendulum": experiments.PENDULUM_PIPELINE,
    "hopper": experiments.HOPPER_PIPELINE,
}
BASE_KINDS = ("zip", "pipeline", "dataset")
METHOD_KEYS = ("algo", "preset", "kwargs", "wrapper_kwargs", "from_base", "n_envs", "policy")
CONFIG_KEYS = (
    "env",
    "base",
    "expert",
    "expert_return",
    "methods",
    "budget",
    "seeds",
    "eval_starts",
    "eval_every",
    "eval_first_seed",
    "eval_envs",
)


COMPARE_INSTALL_HINT = "pip install 'sb3-flow[compare]'"


class ConfigError(ValueError):
    """A comparison config that cannot run; the message names the field."""


@dataclass(frozen=True)
class BaseSpec:
    """
    Where the base policy comes from.

    :param kind: ``"zip"`` (a saved FlowBC model or FlowPolicy), ``"pipeline"`` (expert -> demonstrations -> FlowBC with
        :class:`~sb3_flow.experiments.PipelineSettings`) or ``"dataset"`` (FlowBC on a Demonstrations ``.npz``)
    :param path: the zip or the dataset (absolute), None for a pipeline
    :param pipeline: the pipeline's settings, for ``"pipeline"``
    :param bc_steps: FlowBC gradient steps, for ``"dataset"``
    :param bc_learning_rate: FlowBC learning rate, for ``"dataset"``
    :param bc_kwargs: further FlowBC arguments (``"pipeline"`` and ``"dataset"``), e.g. ``n_flow_steps``
    """

    kind: str
    path: str | None = None
    pipeline: experiments.PipelineSettings | None = None
    bc_steps: int = experiments.PENDULUM_PIPELINE.bc_steps
    bc_learning_rate: float = experiments.PENDULUM_PIPELINE.bc_learning_rate
    bc_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """
    One method of the comparison.

    :param name: its name in the config (and in the report)
    :param algo: a name of :func:`sb3_flow.registry.all_algorithms` or of :data:`STEERING_METHODS`
    :param kwargs: constructor arguments, in the RL-Zoo's style (``policy_kwargs`` may be a ``"dict(...)"`` string)
    :param preset: the name of a settings dict of :mod:`sb3_flow.experiments` (e.g. ``FLOW_PPO_PENDULUM_FINETUNE``),
        under ``kwargs``
    :param wrapper_kwargs: arguments of a steering method's wrapper (e.g. ``residual_scale``)
    :param from_base: start from the base (``base_policy=`` for a fine-tuner, a steering method wraps it)
    :param n_envs: training environments
    :param policy: the policy name (``"MlpPolicy"``)
    """

    name: str
    algo: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    wrapper_kwargs: dict[str, Any] = field(default_factory=dict)
    from_base: bool = False
    n_envs: int = 1
    policy: str = "MlpPolicy"

    @property
    def steering(self) -> str | None:
        """The steering wrapper's name (``"dsrl"``, ``"residual"``), None for an algorithm acting on its own."""
        return STEERING_METHODS.get(self.algo)

    def resolved_kwargs(self) -> dict[str, Any]:
        """The constructor arguments: the preset, then ``kwargs`` over it, then defaults that follow from the base."""
        resolved = {**(preset_settings(self.preset) if self.preset else {}), **self.kwargs}
        if self.algo == "dsrl_na" and self.from_base:
            # The same bound as the sac_dsrl wrapper (experiments.steering_wrapper), so that the two DSRLs compare.
            resolved.setdefault("noise_bound", experiments.DSRL_NOISE_BOUND)
        return resolved


@dataclass(frozen=True)
class CompareConfig:
    """
    A comparison: every method from the same base, the same budget, the same seeds, evaluated on the same fixed starts.

    :param env_id: gymnasium environment id
    :param methods: the methods, by name, in the report's order
    :param budget: environment steps of each job
    :param seeds: the seeds; one job per (method, seed)
    :param base: where the base policy comes from (None: every method starts from scratch)
    :param expert: ``"pipeline"`` (the base pipeline's expert) or the path of a saved expert model, for normalized scores
    :param expert_return: the expert's return as a number, instead of ``expert``
    :param eval_starts: number of fixed initial states of each evaluation
        (:func:`~sb3_flow.common.evaluation.returns_on_starts`)
    :param eval_every: environment steps between evaluations (and one at step 0)
    :param eval_first_seed: reset seed of the first start (10000: away from the demonstrations' episodes, seeded from 0)
    :param eval_envs: at most this many evaluation episodes at once (default: all starts in one batch); for
        environments that hold much memory each, such as OGBench's (about 230 MB per cube env)
    """

    env_id: str
    methods: dict[str, MethodSpec]
    budget: int
    seeds: tuple[int, ...]
    base: BaseSpec | None = None
    expert: str | None = None
    expert_return: float | None = None
    eval_starts: int = 50
    eval_every: int = 10_000
    eval_first_seed: int = 10_000
    eval_envs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (written to the output folder's ``config.json``)."""
        return asdict(self)


def preset_names() -> list[str]:
    """The settings dicts of :mod:`sb3_flow.experiments` a method can name as its ``preset``."""
    return sorted(name for name in experiments.__all__ if name.isupper() and isinstance(getattr(experiments, name), dict))


def preset_settings(name: str) -> dict[str, Any]:
    """A copy of the settings dict :mod:`sb3_flow.experiments` holds under ``name``."""
    if name not in preset_names():
        raise ConfigError(f"preset {name!r} is not a settings dict of sb3_flow.experiments; known: {preset_names()}")
    return dict(getattr(experiments, name))


def import_yaml() -> Any:
    """
    :raises ImportError: naming the extra that installs PyYAML, when it is missing
    """
    try:
        import yaml
    except ImportError as error:
        raise ImportError(f"reading a YAML config needs PyYAML: {COMPARE_INSTALL_HINT}") from error
    return yaml


def load_config(path: str | os.PathLike) -> CompareConfig:
    """
    Read and check a YAML comparison config; relative paths in it are read from the config file's folder.

    :param path: the YAML file
    :raises FileNotFoundError: when there is no such file
    :raises ConfigError: naming the field, for anything that cannot run
    """
    path = existing_file(path, what="comparison config (YAML)")
    yaml = import_yaml()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings ({', '.join(CONFIG_KEYS)}), got {type(data).__name__}")
    return config_from_dict(data, root=Path(path).parent)


def as_config(config: CompareConfig | dict[str, Any] | str | os.PathLike) -> CompareConfig:
    """A :class:`CompareConfig` from itself, a dict (relative paths from the working directory) or a YAML path."""
    if isinstance(config, CompareConfig):
        check_config(config)
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    raise TypeError(f"config must be a CompareConfig, a dict or the path of a YAML file, got {type(config).__name__}")


def config_from_dict(data: dict[str, Any], root: str | os.PathLike = ".") -> CompareConfig:
    """
    Build and check a :class:`CompareConfig` from the YAML's mapping.

    :param data: the settings (the keys of :data:`CONFIG_KEYS`)
    :param root: the folder relative paths are read from
    :raises ConfigError: naming the field, for anything that cannot run
    """
    _no_unknown_keys(data, CONFIG_KEYS, "the config")
    for required in ("env", "methods", "budget", "seeds"):
        if required not in data:
            raise ConfigError(f"{required}: missing (a config names {', '.join(CONFIG_KEYS)})")
    if not isinstance(data["env"], str) or not data["env"]:
        raise ConfigError(f"env: expected a gymnasium environment id, got {data['env']!r}")
    base = _base_spec(data.get("base"), data["env"], root)
    methods = data["methods"]
    if not isinstance(methods, dict) or not methods:
        raise ConfigError("methods: expected a mapping of method names to their settings, with at least one method")
    evaluation = {key: data[key] for key in ("eval_starts", "eval_every", "eval_first_seed", "eval_envs") if key in data}
    expert = data.get("expert")
    if expert is not None and expert != "pipeline":
        expert = _existing(expert, root, "expert", ".zip", "saved expert model")
    seeds = data["seeds"]
    config = CompareConfig(
        env_id=data["env"],
        methods={str(name): _method_spec(str(name), spec, base) for name, spec in methods.items()},
        budget=_checked(check_positive_int, data["budget"], "budget"),
        seeds=tuple(seeds) if isinstance(seeds, (list, tuple)) else seeds,
        base=base,
        expert=expert,
        expert_return=data.get("expert_return"),
        **evaluation,
    )
    check_config(config)
    return config


def check_config(config: CompareConfig) -> None:
    """
    Everything about a config that can be checked without training: the numbers, the methods and the files.

    :raises ConfigError: naming the field
    """
    check_env_id(config.env_id)
    _checked(check_positive_int, config.budget, "budget")
    if not isinstance(config.seeds, (tuple, list)) or not config.seeds:
        raise ConfigError(f"seeds: expected a non-empty list of integers, got {config.seeds!r}")
    for seed in config.seeds:
        _checked(check_positive_int, seed, "seeds", minimum=0)
    if len(set(config.seeds)) != len(config.seeds):
        raise ConfigError(f"seeds: each seed once, got {list(config.seeds)}")
    _checked(check_positive_int, config.eval_starts, "eval_starts")
    _checked(check_positive_int, config.eval_first_seed, "eval_first_seed", minimum=0)
    if config.eval_envs is not None:
        _checked(check_positive_int, config.eval_envs, "eval_envs")
    every = _checked(check_positive_int, config.eval_every, "eval_every")
    if every > config.budget:
        raise ConfigError(f"eval_every: must be at most the budget ({config.budget} env steps), got {every}")
    _check_expert(config)
    _check_files(config)
    if not isinstance(config.methods, dict) or not config.methods:
        raise ConfigError("methods: expected a mapping of method names to their settings, with at least one method")
    for spec in config.methods.values():
        _check_method(spec, config.base)


def check_env_id(env_id: Any) -> None:
    """
    The ``env:`` entry names an environment gymnasium can build; an OGBench id (``cube-single-singletask-task2-v0``)
    is registered first by importing ogbench (every process that builds the environment does the same).
    An id with a module prefix (``module:EnvId``) is left to gymnasium, which imports the module when it builds it.

    :raises ConfigError: for anything else
    """
    if not isinstance(env_id, str) or not env_id:
        raise ConfigError(f"env: expected a gymnasium environment id such as 'Pendulum-v1', got {env_id!r}")
    if ":" in env_id:
        return
    try:
        register_ogbench_envs(env_id)
    except ImportError as error:
        raise ConfigError(f"env: {env_id} is an OGBench environment: {error}") from error
    if env_id not in gymnasium.registry:
        raise ConfigError(f"env: {env_id!r} is not a registered gymnasium environment id (e.g. 'Pendulum-v1', 'Hopper-v5')")


def _checked(check: Any, value: Any, name: str, **kwargs: Any) -> Any:
    """Run one of sb3_flow's shared checks, as a ConfigError."""
    try:
        return check(value, name, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None


def _no_unknown_keys(data: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {list(known)}")


def _existing(path: Any, root: str | os.PathLike, name: str, suffix: str, what: str) -> str:
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{name}: expected the path of a {what}, got {path!r}")
    full = Path(root, os.path.expanduser(path)).resolve()
    try:
        return existing_file(full, suffix, what=what)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{name}: {error}") from None


def _base_spec(data: Any, env_id: str, root: str | os.PathLike) -> BaseSpec | None:
    """The ``base:`` entry: exactly one of ``zip:``, ``pipeline:``, ``dataset:``."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"base: expected a mapping with one of {list(BASE_KINDS)}, got {data!r}")
    kinds = [kind for kind in BASE_KINDS if kind in data]
    if len(kinds) != 1:
        raise ConfigError(f"base: name exactly one of {list(BASE_KINDS)}, got {sorted(data)}")
    kind = kinds[0]
    # a zip is used as it is; a pipeline's FlowBC settings are fields of its mapping (base.pipeline.bc_steps)
    allowed = {"zip": (), "pipeline": ("bc_kwargs",), "dataset": ("bc_steps", "bc_learning_rate", "bc_kwargs")}[kind]
    _no_unknown_keys(data, (kind, *allowed), "base")
    bc_kwargs = data.get("bc_kwargs") or {}
    if not isinstance(bc_kwargs, dict):
        raise ConfigError(f"base.bc_kwargs: expected a mapping of FlowBC arguments, got {bc_kwargs!r}")
    if kind == "zip":
        return BaseSpec("zip", path=_existing(data["zip"], root, "base.zip", ".zip", "saved FlowBC model or FlowPolicy"))
    if kind == "dataset":
        path = _existing(data["dataset"], root, "base.dataset", ".npz", "demonstrations file (.npz)")
        steps = _checked(check_positive_int, data.get("bc_steps", BaseSpec.bc_steps), "base.bc_steps")
        rate = _checked(
            check_finite_number, data.get("bc_learning_rate", BaseSpec.bc_learning_rate), "base.bc_learning_rate",
            minimum=0.0, strict=True,
        )  # fmt: skip
        return BaseSpec("dataset", path=path, bc_steps=steps, bc_learning_rate=rate, bc_kwargs=bc_kwargs)
    return BaseSpec("pipeline", pipeline=_pipeline(data["pipeline"], env_id), bc_kwargs=bc_kwargs)


def _pipeline(data: Any, env_id: str) -> experiments.PipelineSettings:
    """``pipeline: pendulum``, or a mapping of PipelineSettings fields with an optional ``preset: pendulum`` under them."""
    if isinstance(data, str):
        data = {"preset": data}
    if not isinstance(data, dict):
        raise ConfigError(f"base.pipeline: expected one of {sorted(PIPELINES)} or a mapping of its settings, got {data!r}")
    names = [item.name for item in fields(experiments.PipelineSettings)]
    _no_unknown_keys(data, ("preset", *names), "base.pipeline")
    preset = data.get("preset", "pendulum")
    if preset not in PIPELINES:
        raise ConfigError(f"base.pipeline: unknown pipeline {preset!r}; known: {sorted(PIPELINES)}")
    overrides = {key: value for key, value in data.items() if key != "preset"}
    settings = experiments.PipelineSettings(**{**asdict(PIPELINES[preset]), **overrides})
    if settings.env_id != env_id:
        raise ConfigError(f"base.pipeline: the {preset!r} pipeline is for {settings.env_id}, not env {env_id}")
    for name in ("expert_steps", "n_episodes", "bc_steps"):
        _checked(check_positive_int, getattr(settings, name), f"base.pipeline.{name}")
    return settings


def _method_spec(name: str, data: Any, base: BaseSpec | None) -> MethodSpec:
    """One entry of ``methods:``; ``from_base`` defaults to True where the method can start from the base."""
    where = f"methods.{name}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with at least algo, got {data!r}")
    _no_unknown_keys(data, METHOD_KEYS, where)
    algo = data.get("algo")
    if algo not in all_algorithms() and algo not in STEERING_METHODS:
        known = sorted([*all_algorithms(), *STEERING_METHODS])
        raise ConfigError(f"{where}.algo: unknown algorithm {algo!r}; known: {known}")
    for key in ("kwargs", "wrapper_kwargs"):
        if not isinstance(data.get(key) or {}, dict):
            raise ConfigError(f"{where}.{key}: expected a mapping of keyword arguments, got {data[key]!r}")
    from_base = data.get("from_base", base is not None and can_start_from_base(algo))
    return MethodSpec(
        name=name,
        algo=algo,
        kwargs=dict(data.get("kwargs") or {}),
        preset=data.get("preset"),
        wrapper_kwargs=dict(data.get("wrapper_kwargs") or {}),
        from_base=from_base,
        n_envs=data.get("n_envs", 1),
        policy=data.get("policy", "MlpPolicy"),
    )


def can_start_from_base(algo: str) -> bool:
    """A steering method, or an algorithm whose constructor takes ``base_policy`` (the fine-tuners, DSRL-NA)."""
    return algo in STEERING_METHODS or "base_policy" in inspect.signature(all_algorithms()[algo]).parameters


def _check_method(spec: MethodSpec, base: BaseSpec | None) -> None:
    where = f"methods.{spec.name}"
    if spec.algo not in all_algorithms() and spec.algo not in STEERING_METHODS:
        known = sorted([*all_algorithms(), *STEERING_METHODS])
        raise ConfigError(f"{where}.algo: unknown algorithm {spec.algo!r}; known: {known}")
    if not isinstance(spec.from_base, bool):
        raise ConfigError(f"{where}.from_base: expected true or false, got {spec.from_base!r}")
    if spec.from_base and not can_start_from_base(spec.algo):
        raise ConfigError(f"{where}.from_base: {spec.algo} takes no base_policy, so it starts from scratch (from_base: false)")
    if spec.steering and not spec.from_base:
        raise ConfigError(f"{where}.from_base: {spec.algo} steers the base; it cannot run without one")
    if spec.from_base and base is None:
        raise ConfigError(f"{where}: starts from the base, but the config names no base (base: zip, pipeline or dataset)")
    if spec.wrapper_kwargs and not spec.steering:
        raise ConfigError(f"{where}.wrapper_kwargs: only steering methods ({sorted(STEERING_METHODS)}) have a wrapper")
    _checked(check_positive_int, spec.n_envs, f"{where}.n_envs")
    if spec.preset is not None:
        try:
            preset_settings(spec.preset)
        except ConfigError as error:
            raise ConfigError(f"{where}.preset: {error}") from None
    _check_kwargs(spec)


def _check_kwargs(spec: MethodSpec) -> None:
    """Keyword arguments the constructor does not take are refused here, not in a worker half an hour later."""
    where = f"methods.{spec.name}.kwargs"
    algorithm = all_algorithms()["sac" if spec.steering else spec.algo]
    parameters = inspect.signature(algorithm).parameters
    managed = {"policy", "env", "seed", "base_policy"}  # set by the job itself
    resolved = spec.resolved_kwargs()
    clashes = sorted(managed & set(resolved))
    if clashes:
        raise ConfigError(f"{where}: {clashes} are set by the comparison itself (policy:, n_envs:, seeds:, base:)")
    if not any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters.values()):
        unknown = sorted(set(resolved) - set(parameters))
        if unknown:
            raise ConfigError(f"{where}: {algorithm.__name__} takes no arguments {unknown}")
    for key, value in resolved.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}.{key}: expected a finite number, got {value!r}")
    if isinstance(resolved.get("policy_kwargs"), str):
        zoo_policy_kwargs(resolved["policy_kwargs"], f"{where}.policy_kwargs")


def zoo_policy_kwargs(text: str, where: str = "policy_kwargs") -> dict[str, Any]:
    """
    The RL-Zoo's ``policy_kwargs: "dict(net_arch=[64, 64], activation_fn=nn.Tanh)"`` as a dict. Evaluated as the Zoo
    does, with only ``dict`` and ``torch.nn`` in scope: the config is the user's own file.

    :raises ConfigError: naming ``where`` when it is no such expression
    """
    from torch import nn

    try:
        value = eval(text, {"__builtins__": {}, "dict": dict, "nn": nn})
    except Exception as error:
        raise ConfigError(f"{where}: {text!r} is not a 'dict(...)' expression: {error}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping or a 'dict(...)' string, got {text!r}")
    return value


def _check_files(config: CompareConfig) -> None:
    """The base's and the expert's files exist (a config built in Python skips :func:`config_from_dict`'s checks)."""
    base_path = None if config.base is None else config.base.path
    for name, path in (("base", base_path), ("expert", None if config.expert == "pipeline" else config.expert)):
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"{name}: no such file {path}")


def _check_expert(config: CompareConfig) -> None:
    if config.expert is not None and config.expert_return is not None:
        raise ConfigError("expert, expert_return: name the expert's return one way, not both")
    if config.expert == "pipeline" and (config.base is None or config.base.kind != "pipeline"):
        raise ConfigError("expert: 'pipeline' is the base pipeline's expert, and the base is not a pipeline")
    if config.expert_return is not None:
        _checked(check_finite_number, config.expert_return, "expert_return")
