"""Experts that produce demonstrations: SB3 agents trained (and cached) locally, and a scripted Pendulum controller."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_flow.common.files import existing_file

EXPERT_ALGOS: dict[str, type[BaseAlgorithm]] = {"sac": SAC, "ppo": PPO, "td3": TD3}

# Per-(algorithm, env) hyperparameters that make a short training run a good expert (RL-Zoo's tuned values).
EXPERT_HYPERPARAMS: dict[tuple[str, str], dict[str, Any]] = {
    ("sac", "Pendulum-v1"): {"learning_rate": 1e-3},
    ("td3", "Pendulum-v1"): {"learning_rate": 1e-3, "policy_kwargs": {"net_arch": [400, 300]}},
    # RL-Zoo's SAC settings for the MuJoCo tasks: start learning after 10k random steps.
    ("sac", "Hopper-v5"): {"learning_starts": 10_000},
}


def default_cache_dir() -> Path:
    """Where trained experts are cached: ``$SB3_FLOW_CACHE`` or ``~/.cache/sb3-flow``."""
    return Path(os.environ.get("SB3_FLOW_CACHE", Path.home() / ".cache" / "sb3-flow"))


def expert_cache_path(env_id: str, algo: str, total_timesteps: int, seed: int, cache_dir: str | Path | None = None) -> Path:
    """File a trained expert is cached in."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / "experts" / f"{algo}_{env_id}_{total_timesteps}_seed{seed}.zip"


def _algo_class(algo: str) -> type[BaseAlgorithm]:
    try:
        return EXPERT_ALGOS[algo.lower()]
    except KeyError as error:
        raise ValueError(f"expert algorithm must be one of {sorted(EXPERT_ALGOS)}, got {algo!r}") from error


def train_expert(
    env_id: str,
    algo: str = "sac",
    total_timesteps: int = 20_000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress_bar: bool = False,
    verbose: int = 0,
) -> BaseAlgorithm:
    """
    Train an SB3 expert, or load it from the cache when the same (env, algorithm, steps, seed) was trained before.

    :param env_id: gymnasium environment id
    :param algo: "sac", "ppo" or "td3"
    :param total_timesteps: training environment steps
    :param seed: random seed
    :param cache_dir: cache folder (default :func:`default_cache_dir`)
    :param progress_bar: show a progress bar while training
    :param verbose: SB3 verbosity
    :return: the trained model
    """
    algo_class = _algo_class(algo)
    path = expert_cache_path(env_id, algo.lower(), total_timesteps, seed, cache_dir)
    if path.is_file():
        return algo_class.load(path, device="cpu")
    hyperparams = EXPERT_HYPERPARAMS.get((algo.lower(), env_id), {})
    model = algo_class("MlpPolicy", env_id, seed=seed, verbose=verbose, device="cpu", **hyperparams)
    model.learn(total_timesteps, progress_bar=progress_bar)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def load_expert(path: str | Path, algo: str = "sac") -> BaseAlgorithm:
    """
    Load a saved SB3 expert.

    :param path: the model zip
    :param algo: the algorithm that saved it
    """
    return _algo_class(algo).load(existing_file(path, ".zip", what="saved expert model"), device="cpu")


def pendulum_swing_up(observation: np.ndarray) -> np.ndarray:
    """
    Scripted expert for Pendulum-v1: energy pumping far from the top, a PD controller near it.

    The dynamics are ``theta'' = 15 sin(theta) + 3 u`` (g = 10, m = l = 1) with |u| <= 2, so the PD region must stay
    small; elsewhere the torque pushes the energy ``0.5 theta'^2 + 15 cos(theta)`` towards its upright value 15.

    :param observation: [cos(theta), sin(theta), theta_dot]
    :return: torque, shape (1,)
    """
    cos_theta, sin_theta, theta_dot = (float(value) for value in np.asarray(observation).reshape(-1)[:3])
    theta = np.arctan2(sin_theta, cos_theta)
    if cos_theta > 0.85:
        torque = -10.0 * theta - 2.0 * theta_dot
    else:
        energy = 0.5 * theta_dot**2 + 15.0 * cos_theta
        torque = 0.5 * (15.0 - energy) * np.sign(theta_dot if theta_dot != 0 else 1.0)
    return np.array([np.clip(torque, -2.0, 2.0)], dtype=np.float32)
