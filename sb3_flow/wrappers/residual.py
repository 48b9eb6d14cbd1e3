"""Residual RL around a frozen flow policy: ``a = clip(a_base + scale * r)`` with the agent's ``r`` in [-1, 1]
(Policy Decorator, Yuan et al., 2024; ResiP, Ankile et al., 2024; ResFiT). Any SB3 algorithm trains the residual.

Policy Decorator: https://arxiv.org/abs/2412.13630, reference implementation https://github.com/tongzhoumu/policy_decorator
ResiP: https://arxiv.org/abs/2407.16677
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from sb3_flow.common.observations import batch_of_one, check_finite_observations, index_rows, n_rows, stack_rows
from sb3_flow.common.utils import (
    check_box_action_space,
    check_positive_finite,
    check_positive_int,
    small_batch_inference,
    zero_init_actor,
)
from sb3_flow.policies.flow_policy import FlowPolicy
from sb3_flow.policies.loading import BaseFlowPolicySource
from sb3_flow.wrappers.frozen import frozen_base_policy, recorded_source, unscale_rows

BASE_NOISE_MODES = ("zero", "random")
BASE_ACTION_KEY = "base_action"
# The residual the environment executed, in the agent's units: the agent's action clipped to [-1, 1], or zeros when
# progressive exploration did not apply it. The Executed* replay buffers store it instead of the agent's sample.
EXECUTED_RESIDUAL_KEY = "executed_residual"


class ResidualCore:
    """
    What the gym and VecEnv residual wrappers share: base actions for a batch, the observation with the base action
    appended, the progressive-exploration schedule and the combination of base and residual.

    :param observation_space: the environment's observation space
    :param action_space: the environment's Box action space
    :param base_policy: FlowPolicy, FlowBC model or path
    :param residual_scale: the largest correction, in normalized [-1, 1] action units (0.03-0.3; 0.1 default)
    :param append_base_action: show the agent the base action (ResiP, ResFiT): appended to a flat Box observation,
        or as a ``"base_action"`` entry of a Dict observation
    :param base_noise: "zero" (the base policy's deterministic action) or "random" (a fresh N(0, I) initial noise)
    :param progressive_steps: H of Policy Decorator's progressive exploration: the residual is applied with
        probability min(1, steps / H) (0: always). An off-policy agent must then store the residual that was executed,
        not the one it sampled: give it ``replay_buffer_class=ExecutedResidualReplayBuffer``
        (``ExecutedResidualDictReplayBuffer`` for Dict observations)
    :param seed: seed of the progressive-exploration draws
    :param device: device of the base policy
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        base_policy: BaseFlowPolicySource,
        residual_scale: float,
        append_base_action: bool,
        base_noise: str,
        progressive_steps: int,
        seed: int | None,
        device: str,
    ):
        check_box_action_space(action_space, "ResidualActionWrapper")
        self.residual_scale = check_positive_finite(residual_scale, "residual_scale")
        if base_noise not in BASE_NOISE_MODES:
            raise ValueError(f"base_noise must be one of {BASE_NOISE_MODES}, got {base_noise!r}")
        self.progressive_steps = check_positive_int(progressive_steps, "progressive_steps", minimum=0)
        self.base_policy = frozen_base_policy(base_policy, device, observation_space, action_space)
        self.base_noise = base_noise
        self.append_base_action = append_base_action
        self.noise_generator = th.Generator(device=self.base_policy.device)
        self.reseed(seed)
        self.n_steps = 0
        action_dim = self.base_policy.action_dim
        self.agent_action_space = spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        self.observation_space = (
            self._augmented_space(observation_space, action_dim) if append_base_action else observation_space
        )

    @staticmethod
    def _augmented_space(space: spaces.Space, action_dim: int) -> spaces.Space:
        base_box = spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        if isinstance(space, spaces.Dict):
            if BASE_ACTION_KEY in space.spaces:
                raise ValueError(f"the observation already has a {BASE_ACTION_KEY!r} entry")
            return spaces.Dict({**space.spaces, BASE_ACTION_KEY: base_box})
        if isinstance(space, spaces.Box) and len(space.shape) == 1:
            low = np.concatenate([space.low, base_box.low]).astype(np.float32)
            high = np.concatenate([space.high, base_box.high]).astype(np.float32)
            return spaces.Box(low, high, dtype=np.float32)
        raise ValueError(
            f"append_base_action needs a flat Box or a Dict observation space, got {space}; use append_base_action=False"
        )

    def reseed(self, seed: int | None) -> None:
        """Seed the base policy's random initial noise and the progressive-exploration draws."""
        self.rng = np.random.default_rng(seed)
        if seed is None:
            self.noise_generator.seed()
        else:
            self.noise_generator.manual_seed(int(seed))

    def base_actions(self, observations: Any) -> np.ndarray:
        """Normalized base actions for a batch of observations, shape (batch, action_dim): one policy call."""
        check_finite_observations(observations, "ResidualActionWrapper's base policy")
        obs_tensor, _ = self.base_policy.obs_to_tensor(observations)
        rows = n_rows(observations)
        shape = (rows, self.base_policy.action_dim)
        if self.base_noise == "zero":
            noise = th.zeros(shape, device=self.base_policy.device)
        else:
            noise = th.randn(shape, generator=self.noise_generator, device=self.base_policy.device)
        with th.no_grad(), small_batch_inference(rows, self.base_policy.device):
            return self.base_policy.sample(obs_tensor, noise=noise).cpu().numpy()

    def augment(self, observations: Any, base_actions: np.ndarray) -> Any:
        """The batch of observations the agent sees."""
        if not self.append_base_action:
            return observations
        if isinstance(observations, dict):
            return {**observations, BASE_ACTION_KEY: base_actions.astype(np.float32)}
        return np.concatenate([observations, base_actions], axis=1).astype(np.float32)

    def combine(self, base_actions: np.ndarray, agent_actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        For a batch: the environment actions (env units), whether the residual was applied, and the residuals executed
        (agent units: the agent's clipped to [-1, 1], zero where progressive exploration did not apply it). Advances
        the schedule.
        """
        agent_actions = np.asarray(agent_actions, dtype=np.float32).reshape(base_actions.shape)
        if not np.all(np.isfinite(agent_actions)):
            raise ValueError(f"residual actions must be finite, got {agent_actions}")
        rows = len(base_actions)
        if self.progressive_steps > 0:
            probability = min(1.0, self.n_steps / self.progressive_steps)
            applied = self.rng.random(rows) < probability
        else:
            applied = np.ones(rows, dtype=bool)
        self.n_steps += rows
        executed = np.clip(agent_actions, -1.0, 1.0) * applied[:, None]
        normalized = np.clip(base_actions + self.residual_scale * executed, -1.0, 1.0)
        return unscale_rows(self.base_policy, normalized), applied, executed

    def step_infos(
        self, base_actions: np.ndarray, env_actions: np.ndarray, applied: np.ndarray, executed: np.ndarray
    ) -> list[dict[str, Any]]:
        """What each environment's ``info`` reports about a step (actions in env units, residuals in agent units)."""
        base_env_actions = unscale_rows(self.base_policy, base_actions)
        return [
            {
                "env_action": env_actions[row],
                "base_action": base_env_actions[row],
                "residual_applied": bool(applied[row]),
                EXECUTED_RESIDUAL_KEY: executed[row],
            }
            for row in range(len(base_actions))
        ]


class ResidualActionWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """
    Residual wrapper for one environment: ``env action = clip(base action + residual_scale * agent action)``
    (Policy Decorator, Yuan et al., 2024; ResiP, Ankile et al., 2024). ``info`` reports ``env_action``,
    ``base_action`` (env units), ``residual_applied`` and ``executed_residual`` (agent units). One base-policy call per
    environment step. See :class:`ResidualCore` for the parameters; to start training at exactly zero correction,
    call :func:`~sb3_flow.common.utils.zero_init_actor` (alias ``zero_init_residual``) on the agent.

    Policy Decorator: https://arxiv.org/abs/2412.13630, reference implementation
    https://github.com/tongzhoumu/policy_decorator
    ResiP: https://arxiv.org/abs/2407.16677
    """

    def __init__(
        self,
        env: gym.Env,
        base_policy: BaseFlowPolicySource,
        residual_scale: float = 0.1,
        append_base_action: bool = False,
        base_noise: str = "zero",
        progressive_steps: int = 0,
        seed: int | None = None,
        device: str = "auto",
    ):
        self.core = ResidualCore(
            env.observation_space, env.action_space, base_policy, residual_scale, append_base_action, base_noise,
            progressive_steps, seed, device,
        )  # fmt: skip
        # Recorded so that gymnasium can re-create the wrapped env from its spec: the path or the frozen copy, not the
        # caller's model (deep-copying a FlowBC model copies its demonstrations, and its logger cannot be copied).
        gym.utils.RecordConstructorArgs.__init__(
            self, base_policy=recorded_source(base_policy, self.core.base_policy), residual_scale=residual_scale,
            append_base_action=append_base_action, base_noise=base_noise, progressive_steps=progressive_steps,
            seed=seed, device=device, _disable_deepcopy=True,
        )  # fmt: skip
        gym.Wrapper.__init__(self, env)
        self.action_space = self.core.agent_action_space
        self.observation_space = self.core.observation_space
        self._base_action: np.ndarray | None = None

    def _observe(self, observation: Any) -> Any:
        batch = batch_of_one(observation)
        self._base_action = self.core.base_actions(batch)
        return index_rows(self.core.augment(batch, self._base_action), 0)

    @property
    def base_policy(self) -> FlowPolicy:
        """The wrapper's frozen copy of the base policy (e.g. to call ``compile_sampler()`` on it)."""
        return self.core.base_policy

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        if kwargs.get("seed") is not None:
            self.core.reseed(kwargs["seed"])
        obs, info = self.env.reset(**kwargs)
        return self._observe(obs), info

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._base_action is None:
            raise RuntimeError("ResidualActionWrapper.step() called before reset()")
        env_actions, applied, executed = self.core.combine(self._base_action, np.asarray(action)[None])
        step_info = self.core.step_infos(self._base_action, env_actions, applied, executed)[0]
        obs, reward, terminated, truncated, info = self.env.step(env_actions[0])
        return self._observe(obs), reward, terminated, truncated, {**info, **step_info}


class VecResidualActionWrapper(VecEnvWrapper):
    """
    Residual wrapper for a VecEnv: one batched base-policy call per step for all environments. Put it on the raw
    VecEnv, under VecNormalize. Parameters as :class:`ResidualActionWrapper`; the progressive schedule counts
    environment steps over all environments.
    """

    def __init__(
        self,
        venv: VecEnv,
        base_policy: BaseFlowPolicySource,
        residual_scale: float = 0.1,
        append_base_action: bool = False,
        base_noise: str = "zero",
        progressive_steps: int = 0,
        seed: int | None = None,
        device: str = "auto",
    ):
        self.core = ResidualCore(
            venv.observation_space, venv.action_space, base_policy, residual_scale, append_base_action, base_noise,
            progressive_steps, seed, device,
        )  # fmt: skip
        super().__init__(venv, observation_space=self.core.observation_space, action_space=self.core.agent_action_space)
        self._base_actions: np.ndarray | None = None
        self._step_infos: list[dict[str, Any]] | None = None

    def _observe(self, observations: Any) -> Any:
        self._base_actions = self.core.base_actions(observations)
        return self.core.augment(observations, self._base_actions)

    @property
    def base_policy(self) -> FlowPolicy:
        """The wrapper's frozen copy of the base policy (e.g. to call ``compile_sampler()`` on it)."""
        return self.core.base_policy

    def reset(self) -> Any:
        return self._observe(self.venv.reset())

    def step_async(self, actions: np.ndarray) -> None:
        if self._base_actions is None:
            raise RuntimeError("VecResidualActionWrapper.step_async() called before reset()")
        env_actions, applied, executed = self.core.combine(self._base_actions, actions)
        self._step_infos = self.core.step_infos(self._base_actions, env_actions, applied, executed)
        self.venv.step_async(env_actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        assert self._step_infos is not None
        for info, step_info in zip(infos, self._step_infos, strict=True):
            info.update(step_info)
        if self.core.append_base_action:
            self._augment_terminal_observations(infos)
        return self._observe(obs), rewards, dones, infos

    def _augment_terminal_observations(self, infos: list[dict[str, Any]]) -> None:
        # SB3 stores infos["terminal_observation"] as the next observation of an episode's last transition: it must
        # look like every other observation the agent sees (one extra batched base call, at episode ends only).
        done = [index for index, info in enumerate(infos) if info.get("terminal_observation") is not None]
        if not done:
            return
        batch = stack_rows([infos[index]["terminal_observation"] for index in done])
        augmented = self.core.augment(batch, self.core.base_actions(batch))
        for row, index in enumerate(done):
            infos[index]["terminal_observation"] = index_rows(augmented, row)


def executed_residuals(actions: np.ndarray, infos: list[dict[str, Any]]) -> np.ndarray:
    """
    The actions to store for a step of ``len(infos)`` environments: each row replaced by the residual its
    environment executed (``info["executed_residual"]``), where the residual wrapper reported one.

    :param actions: the agent's (scaled) actions, as SB3 hands them to the replay buffer
    :param infos: the step's infos
    :return: shape (n_envs, action_dim)
    """
    stored = np.array(actions, dtype=np.float32, copy=True).reshape(len(infos), -1)
    for row, info in enumerate(infos):
        if EXECUTED_RESIDUAL_KEY in info:
            stored[row] = np.asarray(info[EXECUTED_RESIDUAL_KEY], dtype=np.float32).reshape(-1)
    return stored


class _ExecutedResidualMixin:
    """``add`` stores the residual the environment executed instead of the one the agent sampled."""

    def add(
        self,
        obs: Any,
        next_obs: Any,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        super().add(obs, next_obs, executed_residuals(action, infos), reward, done, infos)  # type: ignore[misc]


class ExecutedResidualReplayBuffer(_ExecutedResidualMixin, ReplayBuffer):
    """
    SB3 replay buffer for an off-policy agent on a residual wrapper with progressive exploration: a step on which the
    residual was not applied is stored with the residual that was executed (zero), as Policy Decorator does, so that
    the critic is never credited with an action the environment did not receive. Use
    ``replay_buffer_class=ExecutedResidualReplayBuffer`` (``ExecutedResidualDictReplayBuffer`` for Dict observations).
    """


class ExecutedResidualDictReplayBuffer(_ExecutedResidualMixin, DictReplayBuffer):
    """:class:`ExecutedResidualReplayBuffer` for Dict observation spaces."""


# The residual agent starts at exactly zero correction: the shared helper, under the name the residual papers use.
zero_init_residual = zero_init_actor
