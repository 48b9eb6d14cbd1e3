"""
Group-relative advantages (GRPO) for on-policy fine-tuning without a value network: the envs are split into groups of
G that start each rollout from the same initial state, every env plays one episode, and an episode's advantage is its
return normalized within its group.

DeepSeekMath's GRPO (Shao et al., 2024): https://arxiv.org/abs/2402.03300
Flow-GRPO (Liu et al., 2025), the same estimator for flow models: https://arxiv.org/abs/2505.05470
Reference implementation (Flow-GRPO): https://github.com/yifan123/flow_grpo
"""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs

ADVANTAGE_ESTIMATORS = ("gae", "group")
# Added to the group's std, as SB3 does when it normalizes advantages: a group whose returns are all equal gets zero
# advantages instead of a division by zero.
GROUP_STD_EPS = 1e-8


def check_group_layout(n_envs: int, group_size: int) -> int:
    """
    :param n_envs: number of environments
    :param group_size: G, episodes per initial state
    :return: the number of groups
    :raises ValueError: when ``n_envs`` is not a multiple of ``group_size``
    """
    if n_envs % group_size:
        raise ValueError(
            f"advantage='group' needs n_envs to be a multiple of group_size (each group of group_size envs starts from one "
            f"initial state): got n_envs={n_envs} and group_size={group_size}"
        )
    return n_envs // group_size


def group_advantages(returns: np.ndarray, group_size: int) -> np.ndarray:
    """
    GRPO's advantage ``A_i = (R_i - mean(R_group)) / (std(R_group) + eps)``: zero-mean and unit-std (population std)
    within each group.

    :param returns: episode returns, shape (n_envs,); envs ``g * G .. (g + 1) * G - 1`` form group ``g``
    :param group_size: G
    :return: advantages, shape (n_envs,)
    """
    grouped = np.asarray(returns, dtype=np.float64).reshape(-1, group_size)
    mean, std = grouped.mean(axis=1, keepdims=True), grouped.std(axis=1, keepdims=True)
    return ((grouped - mean) / (std + GROUP_STD_EPS)).reshape(-1)


def env_description(env: VecEnv, index: int) -> str:
    """``"env 3 (Pendulum-v1)"``, or ``"env 3"`` for an env without a registered id, for error messages."""
    spec = env.get_attr("spec", indices=[index])[0]
    return f"env {index} ({spec.id})" if spec is not None else f"env {index}"


def reset_groups(env: VecEnv, group_size: int, group_seeds: np.ndarray) -> VecEnvObs:
    """
    Reset every env, those of group ``g`` with the seed ``group_seeds[g]``, so that a group starts from one state.

    ``VecEnv.seed(seed)`` gives env ``i`` the seed ``seed + i``, so it cannot give several envs the same seed; the
    per-env list it fills (``_seeds``, used by the next ``reset`` of SB3's DummyVecEnv and SubprocVecEnv, then
    cleared) is set directly. The reset goes through the whole wrapper stack (e.g. VecNormalize).

    :param env: the training VecEnv
    :param group_size: G
    :param group_seeds: one seed per group
    :return: the initial observations
    :raises ValueError: when the envs of a group do not start from the same observation (a VecEnv that does not use
        the per-env seeds, or an env whose reset ignores its seed)
    """
    base = env.unwrapped
    seeds = [int(seed) for seed in np.repeat(group_seeds, group_size)]
    if not isinstance(getattr(base, "_seeds", None), list):
        raise ValueError(
            f"advantage='group' resets the envs of a group with one seed through SB3's VecEnv seeding; "
            f"{type(base).__name__} does not support it (use DummyVecEnv or SubprocVecEnv)"
        )
    base._seeds = seeds
    observations = env.reset()
    differing = first_env_off_its_group(observations, group_size)
    if differing is not None:
        first = differing - differing % group_size
        raise ValueError(
            f"advantage='group' needs the envs of a group to start from the same state, but {env_description(env, differing)}"
            f" reset to another observation than {env_description(env, first)} with the same seed: the group cannot be "
            "reset to one initial state (does the env's reset use its seed, e.g. through self.np_random?)"
        )
    return observations


def first_env_off_its_group(observations: VecEnvObs, group_size: int) -> int | None:
    """The first env whose observation differs from the first one of its group (None: none does)."""
    arrays = list(observations.values()) if isinstance(observations, dict) else [observations]
    differs = np.zeros(len(arrays[0]), dtype=bool)
    for array in arrays:
        array = np.asarray(array)
        grouped = array.reshape(-1, group_size, int(np.prod(array.shape[1:], dtype=int)))
        differs |= ~(grouped == grouped[:, :1]).all(axis=2).reshape(-1)
    return int(np.argmax(differs)) if differs.any() else None


def first_episode_mask(episode_starts: np.ndarray, last_dones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """
    The steps of each env's first episode in a rollout that began with a reset of every env. SB3's VecEnvs reset an
    env as soon as its episode ends (termination or truncation), so a rollout row continues with a new episode after
    that; those steps are not part of the group's episode.

    :param episode_starts: the rollout buffer's (n_steps, n_envs) flags: step t is the first of an episode
    :param last_dones: (n_envs,) whether the rollout's last step ended an episode (SB3's ``_last_episode_starts``)
    :return: the mask (n_steps, n_envs), True up to and including the step that ended the first episode; and
        (n_envs,) whether that episode ended within the rollout (where not, the mask is True everywhere)
    """
    # dones[t] = the episode ended at step t = step t + 1 starts a new one.
    dones = np.concatenate([episode_starts[1:], np.asarray(last_dones)[None]]).astype(bool)
    ended = dones.any(axis=0)
    last_step = np.where(ended, dones.argmax(axis=0), len(dones) - 1)
    return np.arange(len(dones))[:, None] <= last_step[None], ended
