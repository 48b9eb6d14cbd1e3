"""
A toy task whose demonstrations are multimodal: in every state the demonstrator takes ``+mode`` or ``-mode`` with equal
probability. Behaviour cloning with a Gaussian regresses to the mean, 0, an action no demonstrator took; a flow policy
keeps both modes. ``sb3-flow demo`` shows it in its first panel.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_flow.common.demonstrations import Demonstrations
from sb3_flow.common.utils import check_finite_number, check_positive_int

BIMODAL_MODE = 0.8


class BimodalEnv(gym.Env):
    """
    Random observations in [-1, 1]^obs_dim that carry no information; the reward is 1 when the 1-d action lies within 0.1
    of ``+mode`` or ``-mode``, so both modes are equally good and their mean is worthless.

    :param episode_length: steps per episode (then truncated)
    :param obs_dim: observation size
    :param mode: where the two modes lie, in (0, 1)
    """

    def __init__(self, episode_length: int = 20, obs_dim: int = 2, mode: float = BIMODAL_MODE) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (check_positive_int(obs_dim, "obs_dim"),), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.episode_length = check_positive_int(episode_length, "episode_length")
        self.mode = check_finite_number(mode, "mode", minimum=0.0, strict=True)
        if self.mode >= 1.0:
            raise ValueError(f"mode must lie inside the action bounds (0, 1), got {mode!r}")
        self._t = 0

    def _observation(self) -> np.ndarray:
        # The environment's own generator, so that reset(seed=...) makes the episode reproducible.
        return self.np_random.uniform(-1.0, 1.0, self.observation_space.shape).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._t = 0
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._t += 1
        reward = float(np.min(np.abs(np.abs(np.asarray(action)) - self.mode)) < 0.1)
        return self._observation(), reward, False, self._t >= self.episode_length, {}


def bimodal_demonstrations(
    n: int = 4000, seed: int = 0, obs_dim: int = 2, mode: float = BIMODAL_MODE, episode_length: int = 20
) -> Demonstrations:
    """
    Demonstrations of :class:`BimodalEnv`: uniform random observations, the action ``+mode`` or ``-mode`` with equal
    probability in every state, reward 1, episodes of ``episode_length`` steps.

    :param n: transitions
    :param seed: the generator's seed
    :param obs_dim: observation size
    :param mode: where the two modes lie
    :param episode_length: steps per episode
    """
    n = check_positive_int(n, "n")
    episode_length = check_positive_int(episode_length, "episode_length")
    rng = np.random.default_rng(seed)
    observations = rng.uniform(-1, 1, (n, obs_dim)).astype(np.float32)
    actions = rng.choice([-mode, mode], size=(n, 1)).astype(np.float32)
    starts = np.zeros(n, dtype=bool)
    starts[::episode_length] = True
    return Demonstrations(
        observations=observations,
        actions=actions,
        rewards=np.ones(n, np.float32),
        next_observations=np.roll(observations, -1, axis=0),
        terminations=np.zeros(n, bool),
        truncations=np.roll(starts, -1),
        episode_starts=starts,
    )
