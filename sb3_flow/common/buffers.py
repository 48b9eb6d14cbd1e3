"""Replay buffers that hold an offline dataset beside the online transitions (offline, then offline-to-online RL)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples, ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from sb3_flow.common.observations import Observations, concatenate_rows, copy_rows, index_rows, to_tensor

Samples = ReplayBufferSamples | DictReplayBufferSamples


class OfflineData(NamedTuple):
    """
    Offline transitions as the buffer keeps them: actions already normalized to [-1, 1], ``terminations`` only (a
    truncated episode end is not a terminal state: its target still bootstraps).
    """

    observations: Observations
    actions: np.ndarray
    next_observations: Observations
    rewards: np.ndarray
    terminations: np.ndarray


def _concatenate(first: Any, second: Any) -> Any:
    if first is None:
        return None
    if isinstance(first, dict):
        return {key: th.cat([first[key], second[key]]) for key in first}
    return th.cat([first, second])


class OfflineDataMixin:
    """
    Adds a fixed block of offline transitions to an SB3 replay buffer. The online part is SB3's own (circular,
    ``buffer_size`` rows per environment, with SB3's timeout handling); the offline block is never overwritten, and
    :meth:`sample` draws uniformly over all offline and online transitions together, as FQL's buffer does when it
    appends online data to the dataset (Park et al., 2025).
    """

    buffer_size: int
    n_envs: int
    pos: int
    full: bool
    device: th.device
    offline: OfflineData | None = None

    @property
    def n_offline(self) -> int:
        """Number of offline transitions."""
        return 0 if self.offline is None else len(self.offline.actions)

    @property
    def n_online(self) -> int:
        """Number of online transitions stored (all environments)."""
        return (self.buffer_size if self.full else self.pos) * self.n_envs

    def size(self) -> int:  # type: ignore[override]
        """Offline plus online transitions."""
        return self.n_offline + self.n_online

    def add_offline(self, data: OfflineData) -> None:
        """
        Append offline transitions (copied) to the offline block.

        :param data: the transitions, actions normalized to [-1, 1]
        """
        data = OfflineData(
            observations=copy_rows(data.observations),
            actions=np.asarray(data.actions, dtype=np.float32).reshape(len(data.actions), -1),
            next_observations=copy_rows(data.next_observations),
            rewards=np.asarray(data.rewards, dtype=np.float32).reshape(-1, 1),
            terminations=np.asarray(data.terminations, dtype=np.float32).reshape(-1, 1),
        )
        if self.offline is not None:
            data = OfflineData(*(concatenate_rows([old, new]) for old, new in zip(self.offline, data, strict=True)))
        self.offline = data

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> Samples:
        """
        ``batch_size`` transitions drawn uniformly (with replacement) from the offline and online ones together.

        :param batch_size: number of transitions
        :param env: the VecNormalize wrapper, if any, to normalize observations and rewards as SB3 does
        """
        total = self.size()
        if total == 0:
            raise ValueError("The replay buffer is empty: add a dataset or collect transitions before training")
        n_from_offline = int(np.random.binomial(batch_size, self.n_offline / total))
        online = super().sample(batch_size - n_from_offline, env) if n_from_offline < batch_size else None  # type: ignore[misc]
        if n_from_offline == 0:
            return online
        offline = self._offline_samples(np.random.randint(0, self.n_offline, size=n_from_offline), env)
        if online is None:
            return offline
        return type(offline)(*(_concatenate(a, b) for a, b in zip(offline, online, strict=True)))

    def _offline_samples(self, rows: np.ndarray, env: VecNormalize | None) -> Samples:
        assert self.offline is not None
        observations = index_rows(self.offline.observations, rows)
        next_observations = index_rows(self.offline.next_observations, rows)
        rewards = self.offline.rewards[rows]
        if env is not None:
            observations, next_observations = env.normalize_obs(observations), env.normalize_obs(next_observations)
            rewards = env.normalize_reward(rewards).astype(np.float32)
        samples_class = DictReplayBufferSamples if isinstance(observations, dict) else ReplayBufferSamples
        return samples_class(
            observations=to_tensor(observations, self.device),
            actions=th.as_tensor(self.offline.actions[rows], device=self.device),
            next_observations=to_tensor(next_observations, self.device),
            dones=th.as_tensor(self.offline.terminations[rows], device=self.device),
            rewards=th.as_tensor(rewards, device=self.device),
        )


class OfflineReplayBuffer(OfflineDataMixin, ReplayBuffer):
    """SB3 ReplayBuffer with an offline block (see :class:`OfflineDataMixin`)."""


class DictOfflineReplayBuffer(OfflineDataMixin, DictReplayBuffer):
    """SB3 DictReplayBuffer with an offline block (see :class:`OfflineDataMixin`)."""
