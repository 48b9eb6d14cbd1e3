"""ReinFlow: PPO over the exact log-probability of a flow policy's noisy integration chain."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.vec_env import VecEnv

from sb3_flow.bases.on_policy import FlowOnPolicyAlgorithm, PolicyTerms
from sb3_flow.common.utils import FloatSchedule, check_finite_number, check_positive_finite, check_positive_int
from sb3_flow.policies.loading import BaseFlowPolicySource
from sb3_flow.reinflow.grpo import (
    ADVANTAGE_ESTIMATORS,
    check_group_layout,
    env_description,
    first_episode_mask,
    group_advantages,
    reset_groups,
)
from sb3_flow.reinflow.policies import HALF_LOG_2_PI_E, CnnReinFlowPolicy, MultiInputReinFlowPolicy, ReinFlowPolicy

SelfReinFlow = TypeVar("SelfReinFlow", bound="ReinFlow")


class ChainRolloutBufferSamples(NamedTuple):
    observations: Any
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    chains: th.Tensor  # (K + 1, batch, action_dim)


class ChainStorageMixin:
    """
    Adds the integration chain x_0 .. x_K of every action to an SB3 rollout buffer, and an optional loss mask.

    SB3's ``collect_rollouts`` hands the buffer only the action, so ``add`` takes the chain from the policy's last
    rollout step (:meth:`ReinFlowPolicy.pop_last_chain`), which ran just before it. With a loss mask
    (:meth:`set_loss_mask`), ``get`` yields only the rows it keeps: the others get no weight in the update.
    """

    buffer_size: int
    n_envs: int
    generator_ready: bool
    device: th.device
    chain_source: ReinFlowPolicy | None = None
    chains: np.ndarray
    loss_mask: np.ndarray | None = None

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self.chains_flat = False
        self.loss_mask = None
        if self.chain_source is not None:
            n_chain_points = self.chain_source.n_flow_steps + 1
            action_dim = self.chain_source.action_dim
            self.chains = np.zeros((self.buffer_size, self.n_envs, n_chain_points, action_dim), dtype=np.float32)

    def attach_policy(self, policy: ReinFlowPolicy) -> None:
        """Take chains from ``policy`` (called by ReinFlow once the policy exists)."""
        self.chain_source = policy
        self.reset()

    def set_loss_mask(self, mask: np.ndarray) -> None:
        """
        Keep only some rows of this rollout in the update (``get``); cleared by ``reset``.

        :param mask: shape (n_steps, n_envs), True for the rows to keep; set before the buffer is flattened
        """
        assert not self.chains_flat, "set the loss mask before the buffer is flattened"
        self.loss_mask = np.asarray(mask, dtype=bool).reshape(self.buffer_size, self.n_envs)

    def add(self, *args: Any, **kwargs: Any) -> None:
        assert self.chain_source is not None, "attach_policy() first"
        position = self.pos  # type: ignore[attr-defined]
        # (K + 1, n_envs, action_dim) -> (n_envs, K + 1, action_dim)
        self.chains[position] = self.chain_source.pop_last_chain().transpose(0, 1).cpu().numpy()
        super().add(*args, **kwargs)  # type: ignore[misc]

    def flatten(self) -> None:
        """Let SB3 flatten (n_steps, n_envs) into one axis, and do the same for the chains and the loss mask."""
        if not self.generator_ready:
            # SB3's own get swaps and flattens its arrays on first use (not self.get: with a mask it calls flatten).
            next(super().get(batch_size=1))  # type: ignore[misc]
        if not self.chains_flat:
            self.chains = self.swap_and_flatten(self.chains)  # type: ignore[attr-defined]
            if self.loss_mask is not None:
                self.loss_mask = self.swap_and_flatten(self.loss_mask).reshape(-1)  # type: ignore[attr-defined]
            self.chains_flat = True

    def get(self, batch_size: int | None = None) -> Generator[Any, None, None]:
        """SB3's shuffled minibatches; with a loss mask, of the kept rows only."""
        if self.loss_mask is None:
            yield from super().get(batch_size)  # type: ignore[misc]
            return
        self.flatten()
        rows = np.random.permutation(np.flatnonzero(self.loss_mask))
        batch_size = len(rows) if batch_size is None else batch_size
        for start in range(0, len(rows), batch_size):
            yield self._get_samples(rows[start : start + batch_size])

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> ChainRolloutBufferSamples:
        samples = super()._get_samples(batch_inds, env)  # type: ignore[misc]
        if not self.chains_flat:  # flatten() is running get() for SB3's own arrays
            return samples
        chains = self.to_torch(self.chains[batch_inds]).transpose(0, 1)  # type: ignore[attr-defined]
        return ChainRolloutBufferSamples(*samples, chains)


class ChainRolloutBuffer(ChainStorageMixin, RolloutBuffer):
    """SB3 RolloutBuffer that also keeps every action's integration chain."""


class ChainDictRolloutBuffer(ChainStorageMixin, DictRolloutBuffer):
    """SB3 DictRolloutBuffer that also keeps every action's integration chain."""


def check_no_critic_options(critic_warmup_rollouts: int, critic_learning_rate: float | Schedule | None) -> None:
    """
    :raises ValueError: when an option of the value network is set with ``advantage="group"``, which has none
    """
    if critic_warmup_rollouts != 0:
        raise ValueError(
            f"advantage='group' trains no value network: critic_warmup_rollouts must be 0, got {critic_warmup_rollouts!r}"
        )
    if critic_learning_rate is not None:
        raise ValueError(
            f"advantage='group' trains no value network: critic_learning_rate must be None, got {critic_learning_rate!r}"
        )


class ReinFlow(FlowOnPolicyAlgorithm):
    """
    ReinFlow (Zhang et al., 2025, "ReinFlow: Fine-tuning Flow Matching Policy with Online Reinforcement Learning"):
    noise injected at every integration step turns the flow into a Gaussian Markov chain with an exact
    log-probability, and PPO runs on it. The noise is learned (``noise="learned"``) or a fixed std (``"fixed"``, the
    DPPO / Flow-GRPO-style SDE); it is also the exploration. Deterministic prediction integrates the mean chain from
    zero noise. The main use is fine-tuning a FlowBC base (``base_policy=``); training from scratch works too.

    ``advantage="group"`` replaces the critic's GAE advantages by GRPO's group-relative ones (DeepSeekMath's GRPO, and
    Flow-GRPO for flow models), for episodic tasks whose initial state can be reset by seed: each rollout resets the envs
    in groups of ``group_size`` that share a seed (so a group starts from one state), every env plays one episode, and
    every step of an episode gets ``A = (R - mean(R_group)) / (std(R_group) + eps)``, R being the episode's undiscounted
    return. Steps after an env's episode ended (SB3's VecEnvs reset it and go on) get no weight in the update. No value
    network is used: the policy keeps SB3's value head (the rollout runs it), which is neither trained nor used.

    Paper: https://arxiv.org/abs/2505.22094
    Reference implementation: https://github.com/ReinFlow/ReinFlow
    GRPO: https://arxiv.org/abs/2402.03300 (DeepSeekMath); Flow-GRPO: https://arxiv.org/abs/2505.05470,
    https://github.com/yifan123/flow_grpo

    :param policy: "MlpPolicy", "CnnPolicy", "MultiInputPolicy" or a ReinFlowPolicy class
    :param env: environment or its id
    :param learning_rate: actor learning rate (and critic's unless ``critic_learning_rate``); authors, Hopper: 4.5e-5
    :param n_steps: steps per environment per rollout (authors: 500 x 40 envs)
    :param batch_size: minibatch size
    :param n_epochs: passes over each rollout (authors: 5)
    :param gamma: discount factor (no effect with ``advantage="group"``: returns are undiscounted)
    :param gae_lambda: GAE lambda (no effect with ``advantage="group"``)
    :param clip_range: PPO epsilon (authors: 0.01, on the normalized log-probability)
    :param clip_range_vf: value clipping (None: none)
    :param normalize_advantage: normalize advantages per minibatch (not with ``advantage="group"``, whose advantages are
        normalized within each group instead; it is then stored as False)
    :param ent_coef: weight of the chain's mean per-step Gaussian entropy (authors: 0.03; no effect with fixed noise)
    :param vf_coef: value-loss weight (authors: 0.5; no effect with ``advantage="group"``)
    :param max_grad_norm: gradient-norm clipping
    :param target_kl: stop an update's epochs early when the approximate KL exceeds 1.5x this
    :param noise: "learned" or "fixed"
    :param min_std: lower bound of the learned std (normalized action units; authors, Hopper: 0.10); also the floor of
        an annealed ``max_std`` and the fixed std of the frozen steps of ``n_finetune_steps``
    :param max_std: upper bound of the learned std, or the fixed std; a float or a schedule of the remaining progress
        (1 -> 0), e.g. to anneal exploration (authors, Hopper: 0.24). A schedule's value below ``min_std`` is raised to
        ``min_std``; a negative or non-finite one stops training with a ValueError.
    :param noise_net_arch: hidden sizes of the noise network (authors: 64x64)
    :param n_finetune_steps: train only the last M integration steps; the earlier ones stay the base's (DPPO), with the
        fixed noise std ``min_std``
    :param log_prob_normalization: "per_step_dim" (authors: divide by (K + 1) x action_dim) or "none"
    :param log_ratio_clamp: the log-ratio is clamped to [-c, c] before exp
    :param n_flow_steps: integration steps K (default: ``policy_kwargs``'s, else the base policy's, else 4 as the
        authors' locomotion)
    :param base_policy: pretrained FlowPolicy (object, FlowBC model or path) to fine-tune; only its flow is taken (a
        copy): the value and noise networks start fresh
    :param critic_warmup_rollouts: rollouts during which only the value function learns (0 with ``advantage="group"``)
    :param critic_learning_rate: separate value-network learning rate (authors, Hopper: 6.5e-4; None with
        ``advantage="group"``)
    :param base_regularization_coef: weight of ``||a(s, x0=0) - a_base(s, x0=0)||^2`` (authors' BC regularizer: 0.1)
    :param advantage: "gae" (a value network and GAE, the authors') or "group" (GRPO: episode returns normalized within
        groups of ``group_size`` envs that start from the same state; no value network). "group" needs episodes that end
        (termination or time limit) within ``n_steps``, and ``n_envs`` a multiple of ``group_size``
    :param group_size: G, the envs (episodes) per initial state with ``advantage="group"``, at least 2
    :param rollout_buffer_class: override the rollout buffer (must keep the chains)
    :param rollout_buffer_kwargs: its keyword arguments
    :param stats_window_size: SB3 logging window
    :param tensorboard_log: tensorboard folder
    :param policy_kwargs: policy keyword arguments
    :param verbose: verbosity
    :param seed: random seed
    :param device: "auto", "cpu" or "cuda"
    :param _init_setup_model: build the networks now
    """

    default_rollout_buffer_classes = (ChainRolloutBuffer, ChainDictRolloutBuffer)
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ReinFlowPolicy,
        "CnnPolicy": CnnReinFlowPolicy,
        "MultiInputPolicy": MultiInputReinFlowPolicy,
    }
    policy: ReinFlowPolicy
    rollout_buffer: ChainRolloutBuffer | ChainDictRolloutBuffer
    default_n_flow_steps = 4

    def __init__(
        self,
        policy: str | type[ReinFlowPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 5,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.01,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.03,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        target_kl: float | None = None,
        noise: str = "learned",
        min_std: float = 0.10,
        max_std: float | Schedule = 0.24,
        noise_net_arch: list[int] | None = None,
        n_finetune_steps: int | None = None,
        log_prob_normalization: str = "per_step_dim",
        log_ratio_clamp: float = 5.0,
        n_flow_steps: int | None = None,
        base_policy: BaseFlowPolicySource | None = None,
        critic_warmup_rollouts: int = 0,
        critic_learning_rate: float | Schedule | None = None,
        base_regularization_coef: float = 0.0,
        advantage: str = "gae",
        group_size: int = 8,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        log_ratio_clamp = check_positive_finite(log_ratio_clamp, "log_ratio_clamp")
        ent_coef = check_finite_number(ent_coef, "ent_coef", minimum=0)
        if advantage not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage must be one of {ADVANTAGE_ESTIMATORS}, got {advantage!r}")
        group_size = check_positive_int(group_size, "group_size (episodes per initial state)", minimum=2)
        if advantage == "group":
            check_no_critic_options(critic_warmup_rollouts, critic_learning_rate)
        self.advantage = advantage
        self.group_size = group_size
        # The noise model is the policy's; its options are passed to it beside policy_kwargs (see policy_options).
        self.noise = noise
        self.min_std = min_std
        self.max_std = max_std  # a float or a schedule; a schedule from _setup_model on, as SB3 does with clip_range
        self.noise_net_arch = noise_net_arch
        self.n_finetune_steps = n_finetune_steps
        self.log_prob_normalization = log_prob_normalization
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            base_policy=base_policy,
            n_flow_steps=n_flow_steps,
            critic_warmup_rollouts=critic_warmup_rollouts,
            critic_learning_rate=critic_learning_rate,
            base_regularization_coef=base_regularization_coef,
            batch_size=batch_size,
            n_epochs=n_epochs,
            clip_range=clip_range,
            clip_range_vf=clip_range_vf,
            # Group advantages are normalized within their groups; renormalizing each minibatch would undo that.
            normalize_advantage=normalize_advantage and advantage == "gae",
            target_kl=target_kl,
        )
        self.log_ratio_clamp = log_ratio_clamp
        if advantage == "group" and self.env is not None:
            check_group_layout(self.env.num_envs, group_size)
        if _init_setup_model:
            self._setup_model()

    def _check_rollout_size(self) -> None:
        # With group advantages the update sees only the steps of each env's first episode, a number that changes
        # from rollout to rollout: the base's warnings about n_steps * n_envs do not apply.
        if self.advantage == "gae":
            super()._check_rollout_size()

    def policy_options(self) -> dict[str, Any]:
        return {
            "noise": self.noise,
            "min_std": self.min_std,
            "max_std": FloatSchedule(self.max_std)(1.0),
            "noise_net_arch": self.noise_net_arch,
            "n_finetune_steps": self.n_finetune_steps,
            "log_prob_normalization": self.log_prob_normalization,
        }

    def _setup_model(self) -> None:
        self.max_std = FloatSchedule(self.max_std)
        super()._setup_model()
        if not isinstance(self.policy, ReinFlowPolicy):
            raise TypeError(f"ReinFlow needs a ReinFlowPolicy, got {type(self.policy).__name__}")
        if not isinstance(self.rollout_buffer, ChainStorageMixin):
            raise TypeError(f"ReinFlow's rollout buffer must keep the chains (ChainStorageMixin): {self.rollout_buffer_class}")
        # The frozen early steps (n_finetune_steps) are the base policy's, which was loaded just now.
        self.policy.sync_frozen_steps()
        self.rollout_buffer.attach_policy(self.policy)

    def collect_rollouts(self, env: VecEnv, callback: Any, rollout_buffer: RolloutBuffer, n_rollout_steps: int) -> bool:
        # The std bound is fixed for a rollout and its update, so the old and new log-probs use the same one.
        progress = self._current_progress_remaining
        self.policy.current_max_std = check_finite_number(
            self.max_std(progress), f"max_std (its schedule's value at progress_remaining={progress:.4f})", minimum=0
        )
        if self.advantage == "gae":
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        self._reset_groups(env)
        # SB3 adds gamma * V(terminal observation) to the reward of a step cut by a time limit (its issue #633); a group
        # return is the episode's own rewards, and the value head is untrained: no bootstrap.
        gamma, self.gamma = self.gamma, 0.0
        try:
            complete = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        finally:
            self.gamma = gamma
        if complete:
            self._set_group_advantages(env)
        return complete

    def _reset_groups(self, env: VecEnv) -> None:
        """Start the rollout with every env reset, the envs of a group with one seed (so from one initial state)."""
        n_groups = check_group_layout(env.num_envs, self.group_size)
        # One seed per group and rollout, from numpy's global generator, which SB3 seeds with seed=: reproducible runs.
        group_seeds = np.random.randint(0, 2**31 - 1, size=n_groups)
        self._last_obs = reset_groups(env, self.group_size, group_seeds)  # type: ignore[assignment]
        self._last_episode_starts = np.ones((env.num_envs,), dtype=bool)

    def _set_group_advantages(self, env: VecEnv) -> None:
        """
        Replace the buffer's GAE advantages by the group-relative ones: each step of an env's first episode gets the
        episode's advantage, the steps after it are masked out of the update.
        """
        buffer = self.rollout_buffer
        mask, ended = first_episode_mask(buffer.episode_starts, self._last_episode_starts)
        if not ended.all():
            raise ValueError(
                f"advantage='group' needs every episode to end within one rollout of n_steps={self.n_steps} steps, but the "
                f"episode of {env_description(env, int(np.argmin(ended)))} did not: set n_steps to at least the episode "
                "length (group advantages are for episodic tasks, e.g. with a time limit)"
            )
        returns = (buffer.rewards.astype(np.float64) * mask).sum(axis=0)
        advantages = group_advantages(returns, self.group_size)
        buffer.advantages = (mask * advantages).astype(np.float32)
        # The value head's estimates are not used: zero values and returns (see values_and_features).
        buffer.values = np.zeros_like(buffer.values)
        buffer.returns = np.zeros_like(buffer.returns)
        buffer.set_loss_mask(mask)
        self.logger.record("rollout/group_return_mean", float(returns.mean()))
        self.logger.record("rollout/group_return_std", float(returns.reshape(-1, self.group_size).std(axis=1).mean()))
        self.logger.record("rollout/group_masked_fraction", float(1.0 - mask.mean()))

    def values_and_features(self, observations: Any) -> tuple[th.Tensor, th.Tensor]:
        if self.advantage == "gae":
            return super().values_and_features(observations)
        # No critic: zero values against the zero returns and values of the buffer, so the shared update's value loss
        # is 0 and the value head is not trained.
        features = self.policy.extract_features(observations, self.policy.features_extractor)
        return th.zeros(features.shape[0], device=features.device), features

    def prepare_update(self) -> None:
        """
        The old chain log-probabilities, computed once per update with the unchanged policy and in training-sized
        batches (same numerics as the update's re-evaluation), so that the first ratio of the update is exactly 1. The
        rollout steps do not compute them.
        """
        self.rollout_buffer.flatten()

        def chain_log_probs(samples: ChainRolloutBufferSamples) -> th.Tensor:
            features = self.policy.extract_features(samples.observations, self.policy.features_extractor)
            return self.policy.evaluate_chains(features, samples.chains)[0]

        self.rollout_buffer.log_probs = self.map_rollout(chain_log_probs).cpu().numpy()

    def policy_terms(self, samples: ChainRolloutBufferSamples, features: th.Tensor) -> PolicyTerms:
        log_probs, entropy = self.policy.evaluate_chains(features, samples.chains)
        log_ratio = (log_probs - samples.old_log_prob).clamp(-self.log_ratio_clamp, self.log_ratio_clamp)
        # exp(mean log std): the geometric mean of the injected noise's std
        logs = {"noise_std": float(th.exp(entropy.detach() - HALF_LOG_2_PI_E).mean())}
        return PolicyTerms(log_ratio=log_ratio, entropy=entropy, logs=logs)

    def learn(
        self: SelfReinFlow,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "ReinFlow",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfReinFlow:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
