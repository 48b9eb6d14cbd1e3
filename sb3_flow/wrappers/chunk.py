"""Action chunking: one action of the wrapped environment is a chunk of H actions of the inner one (Q-chunking, Li et al.,
2025, "Reinforcement Learning with Action Chunking").

Paper: https://arxiv.org/abs/2507.07969
Reference implementation: https://github.com/ColinQiyangLi/qc

A chunk is executed open-loop, so every algorithm, sb3-flow's or SB3's, learns over chunks without knowing about them:
a flow policy that emits H actions per observation (pi0, diffusion policy) is a FlowPolicy on the wrapped env, and a
critic on the wrapped env is QC's critic over chunks, bootstrapping with ``gamma ** H``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from sb3_flow.common.utils import check_discount, check_positive_int


def check_chunk_options(horizon: int, gamma: float, n_executed: int | None) -> tuple[int, float, int]:
    """
    :return: ``(horizon, gamma, n_executed)``, ``n_executed`` set to ``horizon`` when None
    :raises ValueError: for a horizon that is not a positive integer, ``n_executed`` outside [1, horizon], ``gamma``
        outside [0, 1]
    """
    horizon = check_positive_int(horizon, "horizon")
    gamma = check_discount(gamma)
    if n_executed is None:
        return horizon, gamma, horizon
    if isinstance(n_executed, bool) or not isinstance(n_executed, (int, np.integer)) or not 1 <= n_executed <= horizon:
        raise ValueError(f"n_executed must be an integer in [1, horizon={horizon}], got {n_executed!r}")
    return horizon, gamma, int(n_executed)


class ActionChunkWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """
    Action chunking (Q-chunking, Li et al., 2025): one wrapped step executes a chunk of ``horizon`` actions of the
    inner environment, open-loop.

    Paper: https://arxiv.org/abs/2507.07969
    Reference implementation: https://github.com/ColinQiyangLi/qc

    **Action space.** The wrapped action space is a flat ``Box(horizon * action_dim)``, the inner bounds tiled, because
    SB3's policies (and sb3-flow's :class:`~sb3_flow.FlowPolicy`) act on flat Box actions: a (H, action_dim) Box would
    be flattened by them anyway, and QC folds the horizon into the action dimension the same way. Entry
    ``k * action_dim + j`` is component ``j`` of the ``k``-th action; ``action.reshape(wrapper.chunk_shape)`` gives the
    chunk, ``chunk_shape == (horizon, *inner_action_shape)``.

    **A step.** The chunk's actions run in order (only the first ``n_executed`` when given: receding-horizon execution,
    pi0-style) and stop early when the episode terminates or is truncated. The step returns the discounted reward sum
    ``sum_i gamma**i * r_i`` over the executed steps, the last observation, ``terminated`` / ``truncated`` of the last
    executed step, and the last inner step's ``info`` with two keys added: ``info["chunk_steps"]``, the number of
    environment steps executed, and ``info["chunk_discount"] = gamma ** chunk_steps``, what a TD target over chunks
    bootstraps with (QC bootstraps with ``gamma ** H``: its chunks that reach past the episode's end carry no TD loss).
    Give an off-policy learner on the wrapped env the discount ``gamma ** n_executed`` (SB3's own ``gamma``), so that
    its target matches the rewards summed here.

    **Timesteps.** SB3's ``learn(total_timesteps=T)`` counts steps of the wrapped environment, i.e. chunk decisions
    (per environment of a VecEnv): ``T`` decisions execute up to ``T * n_executed`` environment steps, fewer when
    episodes end inside a chunk. :attr:`env_steps` counts the environment steps this wrapper really executed. To
    spend a budget of ``N`` environment steps, learn for ``N // n_executed`` decisions. Put a ``Monitor`` *inside*
    this wrapper (as :func:`make_chunked_vec_env` does) so that SB3's ``ep_rew_mean`` / ``ep_len_mean`` report the
    environment's undiscounted return and its length in environment steps; a Monitor outside records chunk rewards
    and lengths in decisions.

    :param env: the environment (Box action space)
    :param horizon: H, the number of actions in a chunk (QC: 5)
    :param gamma: the discount applied inside a chunk (QC: 0.99)
    :param n_executed: how many of the chunk's actions run before the policy is asked again
        (``1 <= n_executed <= horizon``); None: all ``horizon``
    :raises ValueError: for a horizon that is not a positive integer, ``n_executed`` outside [1, horizon], ``gamma``
        outside [0, 1]
    :raises TypeError: for an action space that is not a Box (as for every sb3-flow wrapper)
    """

    def __init__(self, env: gym.Env, horizon: int, gamma: float = 0.99, n_executed: int | None = None):
        if not isinstance(env.action_space, spaces.Box):
            raise TypeError(
                "ActionChunkWrapper needs a gymnasium.spaces.Box action space (a chunk of H actions is one flat Box), "
                f"got {type(env.action_space).__name__}: {env.action_space}"
            )
        self.horizon, self.gamma, self.n_executed = check_chunk_options(horizon, gamma, n_executed)
        gym.utils.RecordConstructorArgs.__init__(self, horizon=horizon, gamma=gamma, n_executed=n_executed)
        gym.Wrapper.__init__(self, env)
        inner: spaces.Box = env.action_space
        self.chunk_shape: tuple[int, ...] = (self.horizon, *inner.shape)
        self.action_space = spaces.Box(
            low=np.tile(inner.low.reshape(-1), self.horizon),
            high=np.tile(inner.high.reshape(-1), self.horizon),
            dtype=inner.dtype,
        )
        # Powers of gamma computed once per wrapper, not once per step.
        self._discounts = self.gamma ** np.arange(self.horizon, dtype=np.float64)
        self.env_steps = 0

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        inner_space = self.env.action_space
        action = np.asarray(action, dtype=inner_space.dtype)
        if action.size != self.action_space.shape[0]:
            raise ValueError(
                f"ActionChunkWrapper expects a chunk of {self.horizon} actions of shape {inner_space.shape}, i.e. "
                f"{self.action_space.shape[0]} numbers (flat, or shaped {self.chunk_shape}); got shape {action.shape}"
            )
        chunk = action.reshape(self.chunk_shape)
        total = 0.0
        for index in range(self.n_executed):
            obs, reward, terminated, truncated, info = self.env.step(chunk[index])
            self.env_steps += 1
            total += self._discounts[index] * float(reward)
            if terminated or truncated:
                break
        steps = index + 1
        info = {**info, "chunk_steps": steps, "chunk_discount": self.gamma**steps}
        return obs, float(total), terminated, truncated, info


def make_chunked_vec_env(
    env_id_or_callable: str | Callable[..., gym.Env],
    horizon: int,
    n_envs: int = 1,
    gamma: float = 0.99,
    n_executed: int | None = None,
    seed: int | None = None,
    vec_env_cls: type[DummyVecEnv | SubprocVecEnv] | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> VecEnv:
    """
    A VecEnv of chunked environments: SB3's ``make_vec_env`` with :class:`ActionChunkWrapper` inside each environment,
    over its ``Monitor`` (so episode statistics are in environment steps and undiscounted rewards).

    The wrapper holds no policy, so nothing is gained by batching it; and a ``VecEnvWrapper`` that executed chunks by
    stepping the VecEnv H times would be wrong: an environment whose episode ends inside the chunk is auto-reset by the
    VecEnv and would then run the rest of its chunk in the new episode, while the others still execute theirs. Inside
    each environment a chunk stops at its own episode's end.

    Paper: https://arxiv.org/abs/2507.07969

    :param env_id_or_callable: a registered env id or a callable returning a new environment
    :param horizon: H, actions per chunk
    :param n_envs: number of environments
    :param gamma: the discount inside a chunk
    :param n_executed: actions of a chunk executed before replanning (None: all)
    :param seed: seed of the first environment (the others get seed + 1, ...)
    :param vec_env_cls: ``DummyVecEnv`` (default) or ``SubprocVecEnv``
    :param env_kwargs: keyword arguments of the environment's constructor
    :return: the VecEnv; ``venv.get_attr("env_steps")`` gives each environment's executed steps
    """
    # Checked here, so that a bad value is reported once, not from inside n_envs constructors (or subprocesses).
    check_chunk_options(horizon, gamma, n_executed)
    wrapper_kwargs = {"horizon": horizon, "gamma": gamma, "n_executed": n_executed}
    return make_vec_env(
        env_id_or_callable,
        n_envs=n_envs,
        seed=seed,
        vec_env_cls=vec_env_cls,
        env_kwargs=env_kwargs,
        wrapper_class=ActionChunkWrapper,
        wrapper_kwargs=wrapper_kwargs,
    )


def find_chunk_wrapper(env: gym.Env) -> ActionChunkWrapper | None:
    """The :class:`ActionChunkWrapper` in a chain of gymnasium wrappers, or None."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, ActionChunkWrapper):
            return env
        env = env.env
    return None


def chunked_env(env: gym.Env | VecEnv | str, horizon: int, gamma: float) -> gym.Env | VecEnv:
    """
    ``env`` acting in chunks of ``horizon`` actions: an env id or a gymnasium env is wrapped in
    :class:`ActionChunkWrapper` (unless it already is, with this horizon); a VecEnv must already chunk (build it with
    :func:`make_chunked_vec_env`).

    :param env: the environment, its id, or a VecEnv
    :param horizon: H
    :param gamma: the per-step discount the chunk's rewards are summed with
    :raises ValueError: for a VecEnv that does not chunk, or a wrapper with another horizon or discount
    """
    if isinstance(env, str):
        return ActionChunkWrapper(gym.make(env), horizon, gamma)
    if isinstance(env, VecEnv):
        if not all(env.env_is_wrapped(ActionChunkWrapper)):
            raise ValueError(
                f"action_horizon={horizon} needs environments that act in chunks: build the VecEnv with "
                f"make_chunked_vec_env(env_id, horizon={horizon}, gamma={gamma}), or pass an env id"
            )
        wrappers = [
            (horizon_, gamma_) for horizon_, gamma_ in zip(env.get_attr("horizon"), env.get_attr("gamma"), strict=True)
        ]
    else:
        wrapper = find_chunk_wrapper(env)
        if wrapper is None:
            return ActionChunkWrapper(env, horizon, gamma)
        wrappers = [(wrapper.horizon, wrapper.gamma)]
    for horizon_, gamma_ in wrappers:
        if horizon_ != horizon or gamma_ != gamma:
            raise ValueError(
                f"the environment's ActionChunkWrapper has horizon {horizon_} and gamma {gamma_}; the algorithm has "
                f"action_horizon={horizon} and gamma={gamma}: they must agree (the chunk's reward is discounted with gamma)"
            )
    return env
