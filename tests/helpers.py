"""Tiny environments for fast tests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_flow.common.toy import BimodalEnv, bimodal_demonstrations

__all__ = ["BimodalEnv", "ChannelLastImageEnv", "DictObsEnv", "bimodal_demonstrations"]


class DictObsEnv(gym.Env):
    """Dict observations ("position" 2-d, "goal" 2-d); reward is minus the distance between action and goal."""

    def __init__(self):
        self.observation_space = spaces.Dict(
            {"position": spaces.Box(-1.0, 1.0, (2,), np.float32), "goal": spaces.Box(-1.0, 1.0, (2,), np.float32)}
        )
        self.action_space = spaces.Box(-2.0, 2.0, (2,), np.float32)
        self._obs = None
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self._t = 0
        self._obs = self.observation_space.sample()
        return self._obs, {}

    def step(self, action):
        self._t += 1
        reward = -float(np.linalg.norm(np.asarray(action) - self._obs["goal"]))
        self._obs = self.observation_space.sample()
        return self._obs, reward, False, self._t >= 10, {}


class ChannelLastImageEnv(gym.Env):
    """36x36 RGB observations (NatureCNN's smallest), channel-last as gymnasium renders them (SB3 transposes them)."""

    def __init__(self):
        self.observation_space = spaces.Box(0, 255, (36, 36, 3), np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self._t += 1
        return self.observation_space.sample(), 0.0, False, self._t >= 5, {}
