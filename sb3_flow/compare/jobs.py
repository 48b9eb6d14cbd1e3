"""
One job of a comparison: one method, one seed, trained for the budget with an evaluation on the fixed starts every
``eval_every`` environment steps, its curve and metadata written to ``<out>/jobs/<method>/seed_<seed>.json``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import stable_baselines3
import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env

import sb3_flow
from sb3_flow.common.evaluation import returns_on_starts
from sb3_flow.common.ogbench import register_ogbench_envs
from sb3_flow.common.utils import set_torch_threads, zero_init_actor
from sb3_flow.compare.base import BASE_FILE, BASE_FOLDER, file_sha256, load_base, read_json, settings_hash, write_json_atomic
from sb3_flow.compare.config import CompareConfig, MethodSpec, zoo_policy_kwargs
from sb3_flow.experiments import steering_wrapper
from sb3_flow.policies.flow_policy import FlowPolicy
from sb3_flow.registry import all_algorithms

# Bumped when a job file's content changes meaning: files of another format are rerun, not misread.
JOB_FORMAT = 1
JOBS_FOLDER = "jobs"


@dataclass(frozen=True)
class Job:
    """One (method, seed) of a comparison."""

    method: str
    seed: int

    def __str__(self) -> str:
        return f"{self.method} seed {self.seed}"


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """
    One torch thread for the block (the caller's count restored afterwards): what every job runs with, so that a job's
    numbers do not depend on where it ran, and small MLPs run fastest so (several threads on busy cores crawl).
    """
    threads = th.get_num_threads()
    set_torch_threads(1)
    try:
        yield
    finally:
        set_torch_threads(threads)


def all_jobs(config: CompareConfig) -> list[Job]:
    """Every job of the comparison, seed-major, so that the first finished jobs already cover every method."""
    return [Job(method, seed) for seed in config.seeds for method in config.methods]


def result_path(out_dir: str | os.PathLike, job: Job) -> Path:
    """Where a finished job's curve and metadata go."""
    return Path(out_dir, JOBS_FOLDER, job.method, f"seed_{job.seed}.json")


def error_path(out_dir: str | os.PathLike, job: Job) -> Path:
    """Where a failed job's traceback goes."""
    return Path(out_dir, JOBS_FOLDER, job.method, f"seed_{job.seed}.error.json")


def base_file(out_dir: str | os.PathLike) -> Path:
    """The sweep's base zip, built before any job starts (:func:`~sb3_flow.compare.base.prepare_references`)."""
    return Path(out_dir, BASE_FOLDER, BASE_FILE)


def job_settings(config: CompareConfig, job: Job, base_sha256: str | None) -> dict[str, Any]:
    """
    Everything that determines a job's result: a finished job whose file records the hash of these is not rerun.
    (Not the other methods nor the other seeds: adding a seed or a method reruns nothing.)
    """
    spec = config.methods[job.method]
    return {
        "format": JOB_FORMAT,
        "env_id": config.env_id,
        "method": {**asdict(spec), "resolved_kwargs": spec.resolved_kwargs()},
        "base_sha256": base_sha256 if spec.from_base else None,
        "budget": config.budget,
        "evaluation": {
            "starts": config.eval_starts,
            "every": config.eval_every,
            "first_seed": config.eval_first_seed,
            # only when set, so that the files of configs without it keep their hash
            **({"envs": config.eval_envs} if config.eval_envs is not None else {}),
        },
        "seed": job.seed,
    }


def job_hash(config: CompareConfig, job: Job, base_sha256: str | None) -> str:
    """The hash of :func:`job_settings`."""
    return settings_hash(job_settings(config, job, base_sha256))


def is_finished(out_dir: str | os.PathLike, config: CompareConfig, job: Job, base_sha256: str | None) -> bool:
    """True when the job's result file exists and was written with the same settings."""
    record = read_json(result_path(out_dir, job))
    return record is not None and record.get("settings_hash") == job_hash(config, job, base_sha256)


def versions() -> dict[str, str]:
    """The versions a job ran with."""
    return {
        "sb3_flow": sb3_flow.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "torch": th.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def build_model(
    config: CompareConfig, spec: MethodSpec, seed: int, base: FlowPolicy | None
) -> tuple[BaseAlgorithm, Callable[[Any], Any] | None]:
    """
    The untrained agent of a method, and the wrapper its evaluation environment needs (a steering agent acts through
    one; None for the others).

    :param config: the comparison
    :param spec: the method
    :param seed: the job's seed (the agent's and its training environments')
    :param base: the base policy, for a method that starts from it
    """
    kwargs = spec.resolved_kwargs()
    if isinstance(kwargs.get("policy_kwargs"), str):
        kwargs["policy_kwargs"] = zoo_policy_kwargs(kwargs["policy_kwargs"], f"methods.{spec.name}.kwargs.policy_kwargs")
    kwargs.setdefault("device", "cpu")  # small MLPs: the CPU, one thread per job
    env = make_vec_env(config.env_id, n_envs=spec.n_envs, seed=seed)
    if spec.steering is not None:
        # SAC through the wrapper around the frozen base, its actor starting exactly at the base (as the benchmarks do).
        wrap = steering_wrapper(spec.steering, base, **spec.wrapper_kwargs)
        model = SAC(spec.policy, wrap(env), seed=seed, **kwargs)
        zero_init_actor(model)
        return model, wrap
    if spec.from_base:
        kwargs["base_policy"] = base
    return all_algorithms()[spec.algo](spec.policy, env, seed=seed, **kwargs), None


def _mean_return(model: BaseAlgorithm, config: CompareConfig, wrap: Callable[[Any], Any] | None) -> np.ndarray:
    return returns_on_starts(
        model,
        config.env_id,
        config.eval_starts,
        first_seed=config.eval_first_seed,
        vec_normalize=model.get_vec_normalize_env(),
        wrap=wrap,
        max_envs=config.eval_envs,
    )


def train_with_curve(model: BaseAlgorithm, config: CompareConfig, wrap: Callable[[Any], Any] | None) -> dict[str, Any]:
    """
    Train to the budget, evaluating at step 0 and after every ``eval_every`` environment steps (an on-policy agent
    stops at the end of its rollout, so its points lie at multiples of its rollout size).

    :return: the curve, the last evaluation's per-start returns and the seconds spent training and evaluating
    """
    start = time.perf_counter()
    returns = _mean_return(model, config, wrap)
    curve = [(0, float(returns.mean()))]
    eval_seconds, train_seconds = time.perf_counter() - start, 0.0
    while model.num_timesteps < config.budget:
        target = min((model.num_timesteps // config.eval_every + 1) * config.eval_every, config.budget)
        start = time.perf_counter()
        model.learn(target - model.num_timesteps, reset_num_timesteps=False)
        train_seconds += time.perf_counter() - start
        start = time.perf_counter()
        returns = _mean_return(model, config, wrap)
        eval_seconds += time.perf_counter() - start
        curve.append((int(model.num_timesteps), float(returns.mean())))
    return {
        "curve": curve,
        "final_returns": [float(value) for value in returns],
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
    }


def job_record(config: CompareConfig, job: Job, base_path: str | os.PathLike | None) -> dict[str, Any]:
    """
    Run one job and return what its file holds; an error inside the job is caught and returned as an error record
    with its traceback (the sweep goes on), an interruption (Ctrl-C) is not.

    :param config: the comparison
    :param job: the method and seed
    :param base_path: the sweep's base zip (None when the config has no base)
    """
    spec = config.methods[job.method]
    base_sha256 = file_sha256(base_path) if base_path is not None and os.path.isfile(base_path) else None
    record: dict[str, Any] = {
        "format": JOB_FORMAT,
        "method": job.method,
        "seed": job.seed,
        "settings_hash": job_hash(config, job, base_sha256),
        "settings": job_settings(config, job, base_sha256),
        "versions": versions(),
        "host": platform.node(),
    }
    start = time.perf_counter()
    try:
        register_ogbench_envs(config.env_id)  # a worker process has not imported ogbench (spawned, or a Ray node)
        base = load_base(os.fspath(base_path), config.env_id) if spec.from_base else None
        model, wrap = build_model(config, spec, job.seed, base)
        result = train_with_curve(model, config, wrap)
    except Exception as error:
        record.update(status="error", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    else:
        steps = int(model.num_timesteps)
        record.update(
            status="ok",
            **result,
            final_return=result["curve"][-1][1],
            env_steps=steps,
            steps_per_second=steps / max(result["train_seconds"], 1e-9),
        )
    record["wall_seconds"] = time.perf_counter() - start
    record["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return record


def crash_record(config: CompareConfig, job: Job, base_path: str | os.PathLike | None, message: str) -> dict[str, Any]:
    """
    The error record of a job whose worker died before it could return one (killed, out of memory, a Ray failure).

    :param message: what the launcher knows of the failure (its traceback, when it has one)
    """
    base_sha256 = file_sha256(base_path) if base_path is not None and os.path.isfile(base_path) else None
    return {
        "format": JOB_FORMAT,
        "method": job.method,
        "seed": job.seed,
        "settings_hash": job_hash(config, job, base_sha256),
        "status": "error",
        "error": message.strip().splitlines()[-1] if message.strip() else "the worker died",
        "traceback": message,
        "versions": versions(),
    }


def write_record(out_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """
    Write a job's record atomically: a result replaces the job's error file, an error goes beside any older result
    (whose settings hash no longer matches, or it would not have rerun).

    :return: the file written
    """
    job = Job(record["method"], record["seed"])
    if record["status"] == "ok":
        path = result_path(out_dir, job)
        write_json_atomic(path, record)
        error_path(out_dir, job).unlink(missing_ok=True)
    else:
        path = error_path(out_dir, job)
        write_json_atomic(path, record)
    return path


def run_job(config: CompareConfig, method: str, seed: int, out_dir: str | os.PathLike) -> dict[str, Any]:
    """
    Run one job with the sweep's base from ``<out>/base/base.zip`` and write its file: ``<out>/jobs/<method>/
    seed_<seed>.json`` (curve, final per-start returns, settings, versions, wall time, env steps/s), or
    ``seed_<seed>.error.json`` with the traceback when it fails.

    :param config: the comparison
    :param method: the method's name in the config
    :param seed: the seed
    :param out_dir: the output folder (its base prepared by :func:`~sb3_flow.compare.base.prepare_references`)
    :return: the record written
    """
    path = base_file(out_dir)
    record = job_record(config, Job(method, seed), path if config.base is not None else None)
    write_record(out_dir, record)
    return record
