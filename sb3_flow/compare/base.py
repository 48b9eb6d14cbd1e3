"""
The base policy of a comparison, built once per sweep before any job starts, and the reference returns (base, expert)
that scores are normalized with: all cached in ``<out>/base/`` so that workers load the base rather than retrain it
and a rerun reuses both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

from sb3_flow.bc import FlowBC
from sb3_flow.common.demonstrations import Demonstrations, collect_demonstrations
from sb3_flow.common.evaluation import returns_on_starts
from sb3_flow.common.files import atomic_target
from sb3_flow.compare.config import BaseSpec, CompareConfig
from sb3_flow.experiments import pretrain, train_expert
from sb3_flow.policies.flow_policy import FlowPolicy
from sb3_flow.policies.loading import load_flow_policy

BASE_FOLDER = "base"
BASE_FILE = "base.zip"
REFERENCES_FILE = "references.json"


@dataclass(frozen=True)
class References:
    """
    What the jobs and the report need to know about the base: its file and the returns scores are normalized with.

    :param base_path: the base's zip in the output folder (None without a base)
    :param base_sha256: the zip's content hash (part of every job's settings hash)
    :param base_return: the base's mean return on the evaluation starts (None without a base)
    :param expert_return: the expert's mean return on the same starts, or the config's number (None without one)
    :param base_returns: the base's per-start returns
    :param expert_returns: the expert's per-start returns (empty for a number)
    """

    base_path: str | None
    base_sha256: str | None
    base_return: float | None
    expert_return: float | None
    base_returns: tuple[float, ...] = ()
    expert_returns: tuple[float, ...] = ()


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_hash(settings: Any) -> str:
    """A short stable hash of JSON-ready settings (sorted keys; anything else by its ``str``)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write JSON into a temporary file in the same folder, then ``os.replace`` it: a reader never sees half a file."""
    with atomic_target(path) as temporary:
        Path(temporary).write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON file's mapping, or None when it is missing or unreadable (a file a crash left is treated as absent)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _base_identity(spec: BaseSpec) -> dict[str, Any]:
    """What determines the built base: its settings, and the bytes of the file it is read or trained from."""
    identity = asdict(spec)
    if spec.path is not None:
        identity["file_sha256"] = file_sha256(spec.path)
    return identity


def _build_base(spec: BaseSpec, env_id: str, target: str, log: Callable[[str], None]) -> None:
    """Write the base's zip to ``target``: the user's file as it is, or a FlowBC trained here."""
    if spec.kind == "zip":
        shutil.copyfile(spec.path, target)
        return
    if spec.kind == "dataset":
        log(f"base: FlowBC on {spec.path}, {spec.bc_steps} gradient steps")
        demos = Demonstrations.load(spec.path)
        model = pretrain(FlowBC, env_id, demos, spec.bc_steps, spec.bc_learning_rate, **spec.bc_kwargs)
    else:
        settings = spec.pipeline
        log(
            f"base: pipeline on {env_id}: SAC expert ({settings.expert_steps} steps, cached), {settings.n_episodes} "
            f"demonstrations (action noise {settings.action_noise}), FlowBC {settings.bc_steps} gradient steps"
        )
        expert = _pipeline_expert(spec)
        demos = collect_demonstrations(env_id, expert, settings.n_episodes, settings.action_noise, seed=settings.seed)
        model = pretrain(FlowBC, env_id, demos, settings.bc_steps, settings.bc_learning_rate, settings.seed, **spec.bc_kwargs)
    model.save(target)


def _pipeline_expert(spec: BaseSpec) -> Any:
    settings = spec.pipeline
    return train_expert(settings.env_id, "sac", settings.expert_steps, seed=settings.seed)


def load_base(path: str, env_id: str) -> FlowPolicy:
    """
    The base's FlowPolicy, on the CPU, checked against the environment's spaces.

    :raises ValueError: for a file that holds no FlowPolicy, or one for other spaces than ``env_id``'s
    """
    env = gym.make(env_id)
    try:
        return load_flow_policy(path, device="cpu", observation_space=env.observation_space, action_space=env.action_space)
    finally:
        env.close()


def _evaluate(model: Any, config: CompareConfig) -> list[float]:
    returns = returns_on_starts(
        model, config.env_id, config.eval_starts, first_seed=config.eval_first_seed, max_envs=config.eval_envs
    )
    return [float(value) for value in returns]


def _expert_returns(config: CompareConfig) -> list[float]:
    from sb3_flow.registry import load_any

    expert = _pipeline_expert(config.base) if config.expert == "pipeline" else load_any(config.expert, device="cpu")[0]
    return _evaluate(expert, config)


def prepare_references(config: CompareConfig, out_dir: str | os.PathLike, log: Callable[[str], None] = print) -> References:
    """
    Build (or reuse) the base in ``<out>/base/base.zip`` and evaluate the base and the expert on the evaluation starts;
    a rerun with the same base settings, files and evaluation protocol reuses both.

    :param config: the comparison
    :param out_dir: the output folder
    :param log: where progress lines go
    :raises ValueError: for a base that holds no FlowPolicy for the environment, before any job starts
    """
    folder = Path(out_dir, BASE_FOLDER)
    folder.mkdir(parents=True, exist_ok=True)
    identity = {
        "base": None if config.base is None else _base_identity(config.base),
        "expert": config.expert if config.expert in (None, "pipeline") else file_sha256(config.expert),
        "expert_return": config.expert_return,
        "env_id": config.env_id,
        "evaluation": [config.eval_starts, config.eval_first_seed],
    }
    key = settings_hash(identity)
    base_path = str(folder / BASE_FILE) if config.base is not None else None
    cached = read_json(folder / REFERENCES_FILE)
    if cached is not None and cached.get("key") == key and _same_base_file(base_path, cached.get("base_sha256")):
        log(f"base: reusing {folder}")
        return References(**{**cached["references"], "base_path": base_path})
    base_return, base_returns, sha = None, [], None
    if config.base is not None:
        with atomic_target(base_path) as temporary:
            _build_base(config.base, config.env_id, temporary, log)
        base_returns = _evaluate(load_base(base_path, config.env_id), config)
        base_return, sha = sum(base_returns) / len(base_returns), file_sha256(base_path)
    expert_returns: list[float] = []
    expert_return = config.expert_return
    if config.expert is not None:
        expert_returns = _expert_returns(config)
        expert_return = sum(expert_returns) / len(expert_returns)
    references = References(base_path, sha, base_return, expert_return, tuple(base_returns), tuple(expert_returns))
    write_json_atomic(folder / REFERENCES_FILE, {"key": key, "base_sha256": sha, "references": asdict(references)})
    log(f"base: return {_text(base_return)}, expert: return {_text(expert_return)} ({config.eval_starts} fixed starts)")
    return references


def _same_base_file(base_path: str | None, sha256: str | None) -> bool:
    """True without a base, or when the cached base zip is the one the references were measured on."""
    return base_path is None or (os.path.isfile(base_path) and file_sha256(base_path) == sha256)


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
