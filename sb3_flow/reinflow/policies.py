"""ReinFlow's policy: a flow actor-critic whose integration is a Gaussian Markov chain with learned (or fixed) noise."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch as th
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN, create_mlp
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_flow.common.flow import FlowSample, GridStep, NoiseStdFn, chain_log_probs, gaussian_log_prob, time_grid
from sb3_flow.common.networks import ConditionedVelocity
from sb3_flow.common.utils import check_positive_finite, check_positive_int
from sb3_flow.policies.actor_critic import FlowActorCriticPolicy

NOISE_MODES = ("learned", "fixed")
LOG_PROB_NORMALIZATIONS = ("per_step_dim", "none")
# Gaussian entropy per dimension is 0.5 * log(2 pi e) + log(std).
HALF_LOG_2_PI_E = 0.5 * math.log(2.0 * math.pi * math.e)


class SplitVelocity:
    """
    Velocity field that uses a frozen copy of the velocity network for the early integration times (``t <
    frozen_until``) and the trainable one for the rest: DPPO-style fine-tuning of only the last M steps.

    :param frozen: the frozen network's field for the same observations
    :param trainable: the trainable network's field
    :param frozen_until: times below this use ``frozen``
    """

    def __init__(self, frozen: ConditionedVelocity, trainable: ConditionedVelocity, frozen_until: float):
        self.frozen = frozen
        self.trainable = trainable
        self.frozen_until = frozen_until
        self.conditioning = trainable.conditioning

    def __call__(self, x: th.Tensor, t: th.Tensor) -> th.Tensor:
        return th.where((t < self.frozen_until).unsqueeze(-1), self.frozen(x, t), self.trainable(x, t))

    def on_grid(self, times: th.Tensor) -> GridStep:
        frozen_step, trainable_step = self.frozen.on_grid(times), self.trainable.on_grid(times)
        use_frozen = [time < self.frozen_until for time in times.tolist()]
        return lambda x, i: frozen_step(x, i) if use_frozen[i] else trainable_step(x, i)


class ReinFlowPolicy(FlowActorCriticPolicy):
    """
    Flow actor-critic for ReinFlow (Zhang et al., 2025, "ReinFlow: Fine-tuning Flow Matching Policy with Online
    Reinforcement Learning"). Stochastic actions come from the Markov chain
    ``x_{k+1} ~ N(x_k + v(s, x_k, t_k) / K, sigma(s, t_k)^2)`` started at ``x_0 ~ N(0, I)``, whose log-probability is
    exact; deterministic actions integrate the mean chain from zero noise (the plain FlowPolicy action).

    Paper: https://arxiv.org/abs/2505.22094
    Reference implementation: https://github.com/ReinFlow/ReinFlow

    :param noise: "learned" (ReinFlow: a noise network sigma(s, t_k)) or "fixed" (one std for every step and
        dimension, the DPPO / Flow-GRPO-style SDE)
    :param min_std: lower bound of the learned std, in normalized action units (authors, Hopper: 0.10); also the floor
        of the fixed std, and the fixed std of the frozen early steps with ``n_finetune_steps``
    :param max_std: upper bound of the learned std, and the std of ``noise="fixed"`` (authors, Hopper: 0.24)
    :param noise_net_arch: hidden sizes of the noise network (authors: 64x64 tanh)
    :param n_finetune_steps: M: only the last M integration steps use the trainable velocity network and the learned
        (or scheduled) noise; the earlier ones a frozen copy of the velocity network and the fixed std ``min_std``
        (DPPO); None: all K steps are trained. A shared features extractor keeps training.
    :param log_prob_normalization: "per_step_dim" (the authors': the chain log-probability divided by (K + 1) and the
        action dimension, a temperature on the ratio) or "none" (the exact sum)
    :param args: see :class:`~sb3_flow.policies.actor_critic.FlowActorCriticPolicy`
    :param kwargs: see :class:`~sb3_flow.policies.actor_critic.FlowActorCriticPolicy`
    """

    extra_state_prefixes = ("value_net.", "noise_net.", "frozen_velocity_net.")

    def __init__(
        self,
        *args: Any,
        noise: str = "learned",
        min_std: float = 0.10,
        max_std: float = 0.24,
        noise_net_arch: list[int] | None = None,
        n_finetune_steps: int | None = None,
        log_prob_normalization: str = "per_step_dim",
        **kwargs: Any,
    ):
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
        if log_prob_normalization not in LOG_PROB_NORMALIZATIONS:
            raise ValueError(
                f"log_prob_normalization must be one of {LOG_PROB_NORMALIZATIONS}, got {log_prob_normalization!r}"
            )
        min_std, max_std = check_positive_finite(min_std, "min_std"), check_positive_finite(max_std, "max_std")
        if min_std > max_std:
            raise ValueError(f"noise stds must satisfy 0 < min_std <= max_std; got min_std={min_std} and max_std={max_std}")
        self.noise = noise
        self.min_std = min_std
        self.max_std = max_std
        # The upper bound in use (ReinFlow can anneal it); the algorithm sets it before each rollout.
        self.current_max_std = float(max_std)
        self.noise_net_arch = [64, 64] if noise_net_arch is None else list(noise_net_arch)
        self.n_finetune_steps = None if n_finetune_steps is None else check_positive_int(n_finetune_steps, "n_finetune_steps")
        self.log_prob_normalization = log_prob_normalization
        # The chain of the last forward() call, for the rollout buffer (SB3's collect_rollouts only passes actions on).
        self.last_chain: th.Tensor | None = None
        super().__init__(*args, **kwargs)
        if self.n_finetune_steps is not None and self.n_finetune_steps > self.n_flow_steps:
            raise ValueError(
                f"n_finetune_steps must be an integer in [1, n_flow_steps={self.n_flow_steps}] or None, got {n_finetune_steps}"
            )

    def _build_extra_networks(self) -> None:
        super()._build_extra_networks()
        if self.noise == "learned":
            input_dim = self.features_extractor.features_dim + self.time_embedding_dim
            self.noise_net = nn.Sequential(*create_mlp(input_dim, self.action_dim, self.noise_net_arch, nn.Tanh))
        if self.n_finetune_steps is not None and self.n_finetune_steps < self.n_flow_steps:
            self.frozen_velocity_net = copy.deepcopy(self.velocity_net).requires_grad_(False)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            noise=self.noise,
            min_std=self.min_std,
            max_std=self.max_std,
            noise_net_arch=self.noise_net_arch,
            n_finetune_steps=self.n_finetune_steps,
            log_prob_normalization=self.log_prob_normalization,
        )
        return data

    def actor_parameters(self) -> list[nn.Parameter]:
        noise_parameters = list(self.noise_net.parameters()) if self.noise == "learned" else []
        return [*super().actor_parameters(), *noise_parameters]

    @property
    def frozen_until(self) -> float | None:
        """Integration times below this use the frozen velocity network (None: no frozen steps)."""
        if not hasattr(self, "frozen_velocity_net"):
            return None
        return (self.n_flow_steps - self.n_finetune_steps - 0.25) / self.n_flow_steps

    def sync_frozen_steps(self) -> None:
        """Make the frozen early steps a copy of the current velocity network (after loading base weights)."""
        if hasattr(self, "frozen_velocity_net"):
            self.frozen_velocity_net.load_state_dict(self.velocity_net.state_dict())

    def velocity_field_from_features(self, features: th.Tensor, n_draws: int | None = None) -> ConditionedVelocity:
        field = super().velocity_field_from_features(features, n_draws)
        if self.frozen_until is None:
            return field
        conditioning = self.frozen_velocity_net.condition(features)
        if n_draws is not None:
            conditioning = conditioning.unsqueeze(1)
        return SplitVelocity(ConditionedVelocity(self.frozen_velocity_net, conditioning), field, self.frozen_until)

    def noise_stds(self, features: th.Tensor, n_steps: int | None = None) -> th.Tensor:
        """
        Std of every transition of the chain, per dimension. The upper bound in use (``current_max_std``) is floored at
        ``min_std``, so that an annealed bound reaching 0 still gives a proper Gaussian; the frozen early steps of
        ``n_finetune_steps`` use the fixed std ``min_std``.

        :param features: observation features, shape (batch, features_dim)
        :param n_steps: K (default the policy's)
        :return: shape (K, batch, action_dim) for learned noise; (K, 1, action_dim) for fixed noise
        """
        n_steps = self.n_flow_steps if n_steps is None else n_steps
        times = time_grid(n_steps, features.device)
        upper = max(self.current_max_std, self.min_std)
        if self.noise == "fixed":
            stds = th.full((n_steps, 1, self.action_dim), upper, device=features.device)
        else:
            inputs = th.cat(
                [
                    features.unsqueeze(0).expand(n_steps, -1, -1),
                    self.velocity_net.time_embedding(times).unsqueeze(1).expand(-1, features.shape[0], -1),
                ],
                dim=-1,
            )
            log_min, log_max = math.log(self.min_std), math.log(upper)
            stds = th.exp(log_min + (log_max - log_min) * th.sigmoid(self.noise_net(inputs)))
        if self.frozen_until is not None:
            frozen = (times < self.frozen_until).view(-1, 1, 1)
            stds = th.where(frozen, th.full_like(stds, self.min_std), stds)
        return stds

    @staticmethod
    def _std_fn(stds: th.Tensor) -> NoiseStdFn:
        return lambda x, t, k: stds[k]

    def chain_log_prob(self, step_log_probs: th.Tensor, chain: th.Tensor) -> th.Tensor:
        """
        Log-probability of whole chains: N(0, I) at x_0 plus every transition, normalized as configured.

        :param step_log_probs: per-transition log-probabilities, shape (K, batch)
        :param chain: x_0 .. x_K, shape (K + 1, batch, action_dim)
        :return: shape (batch,)
        """
        initial = gaussian_log_prob(chain[0], th.zeros_like(chain[0]), th.ones((), device=chain.device))
        total = initial + step_log_probs.sum(dim=0)
        if self.log_prob_normalization == "per_step_dim":
            total = total / (chain.shape[0] * self.action_dim)
        return total

    def sample_chain(self, features: th.Tensor, deterministic: bool = False, return_log_probs: bool = True) -> FlowSample:
        """
        Deterministic: the mean chain from zero noise. Otherwise the noisy chain from N(0, I), with its per-step
        log-probabilities unless ``return_log_probs`` is False.

        :param features: observation features
        :param deterministic: zero initial noise and no injected noise
        :param return_log_probs: compute the per-step log-probabilities while sampling
        """
        field = self.velocity_field_from_features(features)
        if deterministic:
            return self.integrate_field(field, deterministic=True)
        stds = self.noise_stds(features)
        return self.integrate_field(field, noise_std_fn=self._std_fn(stds), return_log_probs=return_log_probs)

    def evaluate_chains(self, features: th.Tensor, chains: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """
        Log-probabilities and entropies of stored chains under the current networks (the PPO re-evaluation).

        :param features: observation features, shape (batch, features_dim)
        :param chains: shape (K + 1, batch, action_dim)
        :return: chain log-probability (batch,), mean per-step per-dimension Gaussian entropy (batch,)
        """
        stds = self.noise_stds(features, chains.shape[0] - 1)
        step_log_probs = chain_log_probs(
            self.velocity_field_from_features(features), chains, self._std_fn(stds), self.integration_method
        )
        entropy = (HALF_LOG_2_PI_E + th.log(stds)).mean(dim=(0, 2)).expand(chains.shape[1])
        return self.chain_log_prob(step_log_probs, chains), entropy

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        Rollout step: the chain's final point (pre-clip, in the action space's shape), values, and zeros in place of
        log-probabilities; keeps the chain for the rollout buffer. ReinFlow computes the chains' log-probabilities after
        the rollout, in training-sized batches (:meth:`ReinFlow.prepare_update`), so the rollout does not compute them a
        first time.
        """
        with self.inference_kernels(obs):
            features = self.extract_features(obs, self.features_extractor)
            flow = self.sample_chain(features, deterministic, return_log_probs=False)
        self.last_chain = None if deterministic else flow.chain
        actions = flow.actions
        return self.env_shaped(actions), self.value_net(features), th.zeros(actions.shape[0], device=actions.device)

    def pop_last_chain(self) -> th.Tensor:
        """The chain of the last stochastic forward() call, handed over once (the rollout buffer takes it)."""
        if self.last_chain is None:
            raise RuntimeError("no chain to store: the rollout step did not sample the policy's noisy chain")
        chain, self.last_chain = self.last_chain, None
        return chain

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        with self.inference_kernels(observation):
            features = self.extract_features(observation, self.features_extractor)
            return self.sample_chain(features, deterministic).actions.clamp(-1.0, 1.0)


class CnnReinFlowPolicy(ReinFlowPolicy):
    """ReinFlowPolicy with SB3's NatureCNN features extractor."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class MultiInputReinFlowPolicy(ReinFlowPolicy):
    """ReinFlowPolicy with SB3's CombinedExtractor, for Dict observations."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


MlpPolicy = ReinFlowPolicy
CnnPolicy = CnnReinFlowPolicy
MultiInputPolicy = MultiInputReinFlowPolicy
