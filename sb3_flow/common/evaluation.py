"""
Evaluation for the demo and the benchmarks: paired (the same fixed initial states for every method) and on fresh
seeded episodes, for SB3 models and policies and for plain ``obs -> action`` callables.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sb3_flow.common.utils import check_positive_int


class CallablePolicy:
    """
    A plain ``obs -> action`` callable (a scripted expert) with SB3's ``predict``, called once per observation of the
    batch, so that it can be evaluated by the functions that take SB3 models.

    :param function: the callable, for one unbatched observation
    """

    def __init__(self, function: Any) -> None:
        self.function = function

    def predict(
        self, observation: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, Any]:
        actions = np.stack([np.asarray(self.function(single), dtype=np.float32) for single in observation])
        return actions, state


def returns_on_starts(
    model: Any,
    env_id: str,
    n_starts: int = 50,
    first_seed: int = 0,
    vec_normalize: VecNormalize | None = None,
    wrap: Any = None,
    env_wrapper: Any = None,
    deterministic: bool = True,
    max_envs: int | None = None,
) -> np.ndarray:
    """
    Deterministic (by default) returns of ``n_starts`` episodes whose initial states are fixed: episode ``i`` starts from
    ``env.reset(seed=first_seed + i)``. On tasks like Pendulum, where the return depends on the start state far more
    than on the policy, comparing methods on the same starts (a paired comparison) removes most of the noise. All
    episodes run at once in one VecEnv, so the policy is called once per step for the whole batch.

    :param model: anything with ``predict`` (SB3 model or policy), or a plain ``obs -> action`` callable
    :param env_id: environment id
    :param n_starts: number of episodes / initial states
    :param first_seed: seed of the first episode's reset
    :param vec_normalize: training VecNormalize whose observation statistics the policy expects
    :param wrap: optional callable VecEnv -> VecEnv (e.g. a steering wrapper the agent was trained in)
    :param env_wrapper: optional callable gym.Env -> gym.Env applied to each env outside its Monitor (e.g. an
        ``ActionChunkWrapper`` for a policy that acts in chunks): the returns stay the environment's own
    :param deterministic: passed to ``predict``; False gives the policy's own noise (seeded only through the model)
    :param max_envs: at most this many episodes (environments) at once, the starts taken in order in groups of this
        size; default: all at once. For environments that hold much memory each (an OGBench cube env about 230 MB)
    :return: the episode returns, shape (n_starts,), in the starts' order (episode ``i`` at index ``i``, whatever
        order the episodes ended in)
    """
    n_starts = check_positive_int(n_starts, "n_starts")
    chunk = n_starts if max_envs is None else min(check_positive_int(max_envs, "max_envs"), n_starts)
    if callable(model) and not hasattr(model, "predict"):
        model = CallablePolicy(model)
    returns: list[float] = []
    for first in range(0, n_starts, chunk):
        # episode i is still reset with seed first_seed + i: make_vec_env seeds its env j with seed + j
        size = min(chunk, n_starts - first)
        env: VecEnv = make_vec_env(env_id, n_envs=size, seed=first_seed + first, wrapper_class=env_wrapper)
        if wrap is not None:
            env = wrap(env)
        if vec_normalize is not None:
            env = VecNormalize(env, training=False, norm_reward=False)
            env.obs_rms = vec_normalize.obs_rms
        returns.extend(_one_episode_per_env(model, env, size, deterministic))
        env.close()
    return np.asarray(returns, dtype=np.float64)


def _one_episode_per_env(model: Any, env: VecEnv, n_envs: int, deterministic: bool) -> list[float]:
    """
    One episode in each of the ``n_envs`` environments, its return listed at the environment's index.

    SB3's ``evaluate_policy`` lists the returns in the order the episodes end: where episode lengths differ (a
    success ends an OGBench episode early) that order is not the starts' order, and a paired comparison would pair
    the wrong episodes. Its callback sees which environment each counted episode came from.
    """
    finished_envs: list[int] = []

    def note_finished_env(local_vars: dict[str, Any], _globals: dict[str, Any]) -> None:
        # evaluate_policy counts an episode where done is set and Monitor's "episode" entry is in the info
        if local_vars["done"] and "episode" in local_vars["info"]:
            finished_envs.append(int(local_vars["i"]))

    episode_returns, _ = evaluate_policy(
        model,
        env,
        n_eval_episodes=n_envs,
        deterministic=deterministic,
        return_episode_rewards=True,
        callback=note_finished_env,
    )
    if sorted(finished_envs) != list(range(n_envs)):
        raise RuntimeError(f"expected one episode from each of the {n_envs} environments, got them from {finished_envs}")
    by_env = [0.0] * n_envs
    for env_index, episode_return in zip(finished_envs, episode_returns, strict=True):
        by_env[env_index] = float(episode_return)
    return by_env


def evaluate_episodes(policy: Any, env_id: str, n_episodes: int, seed: int) -> tuple[float, float]:
    """
    Mean and standard deviation of ``n_episodes`` deterministic episode returns on one environment seeded with
    ``seed``: SB3's ``evaluate_policy`` for anything with ``predict`` (model or policy); for a plain callable
    ``obs -> action`` (a scripted expert), episode ``i`` starts from ``env.reset(seed=seed + i)``.

    :param policy: an SB3 model or policy, or a callable ``obs -> action``
    :param env_id: environment id
    :param n_episodes: number of episodes
    :param seed: seed of the environment's first reset
    :return: (mean return, standard deviation of the returns)
    """
    n_episodes = check_positive_int(n_episodes, "n_episodes")
    env = Monitor(gym.make(env_id))
    env.reset(seed=seed)
    if callable(policy) and not hasattr(policy, "predict"):
        returns = []
        for episode in range(n_episodes):
            obs, _ = env.reset(seed=seed + episode)
            done, total = False, 0.0
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        env.close()
        return float(np.mean(returns)), float(np.std(returns))
    mean, std = evaluate_policy(policy, env, n_eval_episodes=n_episodes, deterministic=True)
    env.close()
    return float(mean), float(std)
