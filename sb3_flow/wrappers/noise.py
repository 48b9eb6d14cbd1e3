"""DSRL: steer a frozen flow policy through its initial noise (Wagenmaker et al., 2025, "Steering Your Diffusion
Policy with Latent Space Reinforcement Learning").

Paper: https://arxiv.org/abs/2506.15799
Reference implementation: https://github.com/ajwagen/dsrl

The agent's action is the base policy's initial noise ``w = noise_bound * u`` with ``u`` in [-1, 1]; the environment
receives the base policy's deterministic integration from ``w``, so every executed action stays on the base policy's
learned action manifold. Any SB3 algorithm (SAC, TD3, PPO, sb3-contrib's TQC / CrossQ) trains on the wrapped env.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from sb3_flow.common.observations import batch_of_one, check_finite_observations
from sb3_flow.common.utils import check_box_action_space, check_positive_finite, small_batch_inference
from sb3_flow.policies.flow_policy import FlowPolicy
from sb3_flow.policies.loading import BaseFlowPolicySource
from sb3_flow.wrappers.frozen import frozen_base_policy, recorded_source, unscale_rows


def _noise_action_space(policy: FlowPolicy) -> spaces.Box:
    return spaces.Box(-1.0, 1.0, (policy.action_dim,), np.float32)


def _check_agent_actions(actions: np.ndarray, n_rows: int, action_dim: int) -> np.ndarray:
    actions = np.asarray(actions, dtype=np.float32).reshape(n_rows, -1)
    if actions.shape[1] != action_dim:
        raise ValueError(f"expected noise actions of dimension {action_dim}, got {actions.shape[1]}")
    if not np.all(np.isfinite(actions)):
        raise ValueError(f"noise actions must be finite, got {actions}")
    return np.clip(actions, -1.0, 1.0)


def decode_noise_actions(policy: FlowPolicy, observations: Any, agent_actions: np.ndarray, noise_bound: float) -> np.ndarray:
    """
    Environment actions for a batch: the base policy integrated deterministically from ``noise_bound * agent_actions``.

    :param policy: the frozen base policy
    :param observations: a batch of observations (numpy, or a dict of numpy arrays)
    :param agent_actions: (batch, action_dim) in [-1, 1]
    :param noise_bound: the largest absolute initial noise
    :return: (batch, *action_shape) actions in the environment's units
    """
    obs_tensor, _ = policy.obs_to_tensor(observations)
    noise = th.as_tensor(noise_bound * agent_actions, device=policy.device)
    with th.no_grad(), small_batch_inference(len(agent_actions), policy.device):
        normalized = policy.sample(obs_tensor, noise=noise).cpu().numpy()
    return unscale_rows(policy, normalized)


class NoiseActionWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """
    DSRL noise-space wrapper for one environment (DSRL, Wagenmaker et al., 2025). The agent acts in
    Box(-1, 1, (action_dim,)); the executed environment action and the noise are reported in ``info["env_action"]``
    and ``info["noise"]``. The base policy is called once per environment step.

    Paper: https://arxiv.org/abs/2506.15799
    Reference implementation: https://github.com/ajwagen/dsrl

    :param env: the environment (Box action space)
    :param base_policy: FlowPolicy, FlowBC model or path; its spaces must match the environment's. The wrapper acts
        through its own frozen copy: the object passed in is left as it was
    :param noise_bound: the largest absolute initial noise (DSRL's action_magnitude: 1.5; Walker 2.5)
    :param device: device of the base policy
    """

    def __init__(self, env: gym.Env, base_policy: BaseFlowPolicySource, noise_bound: float = 1.5, device: str = "auto"):
        check_box_action_space(env.action_space, "NoiseActionWrapper")
        self.noise_bound = check_positive_finite(noise_bound, "noise_bound")
        self.base_policy = frozen_base_policy(base_policy, device, env.observation_space, env.action_space)
        # Recorded so that gymnasium can re-create the wrapped env from its spec: the path or the frozen copy, not the
        # caller's model (deep-copying a FlowBC model copies its demonstrations, and its logger cannot be copied).
        gym.utils.RecordConstructorArgs.__init__(
            self,
            base_policy=recorded_source(base_policy, self.base_policy),
            noise_bound=noise_bound,
            device=device,
            _disable_deepcopy=True,
        )
        gym.Wrapper.__init__(self, env)
        self.action_space = _noise_action_space(self.base_policy)
        self._last_obs: Any = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._last_obs = obs
        return obs, info

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._last_obs is None:
            raise RuntimeError("NoiseActionWrapper.step() called before reset()")
        batch_obs = batch_of_one(self._last_obs)
        # First: a NaN observation also makes the agent's action NaN, and the observation is the cause to report.
        check_finite_observations(batch_obs, "NoiseActionWrapper's base policy")
        agent_action = _check_agent_actions(action, 1, self.base_policy.action_dim)
        env_action = decode_noise_actions(self.base_policy, batch_obs, agent_action, self.noise_bound)[0]
        obs, reward, terminated, truncated, info = self.env.step(env_action)
        self._last_obs = obs
        info = {**info, "env_action": env_action, "noise": self.noise_bound * agent_action[0]}
        return obs, reward, terminated, truncated, info


class VecNoiseActionWrapper(VecEnvWrapper):
    """
    DSRL noise-space wrapper for a VecEnv: one batched base-policy call per step for all environments (the authors'
    form). Put it directly on the raw VecEnv, under VecNormalize, so that the base policy sees the observations it
    was trained on.

    Paper: https://arxiv.org/abs/2506.15799
    Reference implementation: https://github.com/ajwagen/dsrl

    :param venv: the vectorized environment
    :param base_policy: FlowPolicy, FlowBC model or path (acted through as a frozen copy)
    :param noise_bound: the largest absolute initial noise
    :param device: device of the base policy
    """

    def __init__(self, venv: VecEnv, base_policy: BaseFlowPolicySource, noise_bound: float = 1.5, device: str = "auto"):
        check_box_action_space(venv.action_space, "VecNoiseActionWrapper")
        self.noise_bound = check_positive_finite(noise_bound, "noise_bound")
        self.base_policy = frozen_base_policy(base_policy, device, venv.observation_space, venv.action_space)
        super().__init__(venv, action_space=_noise_action_space(self.base_policy))
        self._last_obs: Any = None
        self._env_actions: np.ndarray | None = None
        self._noises: np.ndarray | None = None

    def reset(self) -> Any:
        self._last_obs = self.venv.reset()
        return self._last_obs

    def step_async(self, actions: np.ndarray) -> None:
        if self._last_obs is None:
            raise RuntimeError("VecNoiseActionWrapper.step_async() called before reset()")
        check_finite_observations(self._last_obs, "VecNoiseActionWrapper's base policy")
        agent_actions = _check_agent_actions(actions, self.num_envs, self.base_policy.action_dim)
        self._noises = self.noise_bound * agent_actions
        self._env_actions = decode_noise_actions(self.base_policy, self._last_obs, agent_actions, self.noise_bound)
        self.venv.step_async(self._env_actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        assert self._env_actions is not None and self._noises is not None
        for index, info in enumerate(infos):
            info["env_action"] = self._env_actions[index]
            info["noise"] = self._noises[index]
        self._last_obs = obs  # after an auto-reset this is the new episode's first observation: the right one
        return obs, rewards, dones, infos
