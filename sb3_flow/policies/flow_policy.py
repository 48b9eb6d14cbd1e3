"""FlowPolicy: a flow-matching policy as an SB3 ``BasePolicy``, the base object every sb3-flow method consumes."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from sb3_flow.common.compiled_sampler import CompiledIntegrator
from sb3_flow.common.flow import (
    INTEGRATION_METHODS,
    FlowSample,
    NoiseStdFn,
    VelocityModifier,
    check_n_flow_steps,
    integrate,
)
from sb3_flow.common.flow import cfm_loss as flow_cfm_loss
from sb3_flow.common.networks import ConditionedVelocity, VelocityNetwork
from sb3_flow.common.observations import first_entry
from sb3_flow.common.utils import fused_adam_kwargs, small_batch_inference
from sb3_flow.policies.base import BoxActionPolicy


class FlowPolicy(BoxActionPolicy):
    """
    Flow-matching policy: an SB3 features extractor followed by a velocity network v(s, x, t); an action is the
    integral of v from Gaussian noise at t = 0 to t = 1 (Lipman et al., 2023; as a policy: Black et al., 2024, pi0).

    Actions live in the normalized box [-1, 1] (SB3's ``scale_action`` / ``unscale_action``) and are clipped there
    after integration, as every reference implementation does; ``predict`` returns them in the env's units.
    ``deterministic=True`` integrates from zero noise (FPO++'s zero-sampling).

    :param observation_space: observation space
    :param action_space: a Box action space with finite bounds
    :param lr_schedule: learning-rate schedule, for the optimizer
    :param net_arch: hidden layer sizes of the velocity network ([]: linear in features, action and time embedding)
    :param activation_fn: activation function class
    :param time_embedding_dim: size of the sinusoidal time embedding (odd)
    :param n_flow_steps: default number of integration steps K
    :param integration_method: ``"euler"`` or ``"midpoint"``
    :param features_extractor_class: SB3 features extractor class
    :param features_extractor_kwargs: its keyword arguments
    :param normalize_images: divide image observations by 255
    :param optimizer_class: optimizer class
    :param optimizer_kwargs: optimizer keyword arguments, besides the learning rate
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.GELU,
        time_embedding_dim: int = 17,
        n_flow_steps: int = 10,
        integration_method: str = "euler",
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ):
        check_n_flow_steps(n_flow_steps)
        if integration_method not in INTEGRATION_METHODS:
            raise ValueError(f"integration_method must be one of {INTEGRATION_METHODS}, got {integration_method!r}")
        super().__init__(
            observation_space,
            action_space,
            net_arch,
            activation_fn,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )
        self.time_embedding_dim = time_embedding_dim
        self.n_flow_steps = n_flow_steps
        self.integration_method = integration_method
        self.compiled_integrator: CompiledIntegrator | None = None
        self._build(lr_schedule)

    def _build(self, lr_schedule: Schedule) -> None:
        self.features_extractor = self.make_features_extractor()
        self.velocity_net = VelocityNetwork(
            self.features_extractor.features_dim,
            self.action_dim,
            self.net_arch,
            self.activation_fn,
            self.time_embedding_dim,
        )
        self._build_extra_networks()
        optimizer_kwargs = fused_adam_kwargs(self.optimizer_class, self.optimizer_kwargs)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **optimizer_kwargs)

    def _build_extra_networks(self) -> None:
        """Subclasses add their networks here (e.g. a critic), before the optimizer is created over all parameters."""

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            time_embedding_dim=self.time_embedding_dim,
            n_flow_steps=self.n_flow_steps,
            integration_method=self.integration_method,
        )
        return data

    def flow_policy_parameters(self) -> dict[str, Any]:
        """
        Constructor arguments of a plain :class:`FlowPolicy` with this policy's flow (e.g. a frozen copy of an
        actor-critic's actor): the subclass's own arguments are left out.
        """
        accepted = inspect.signature(FlowPolicy.__init__).parameters
        return {key: value for key, value in self._get_constructor_parameters().items() if key in accepted}

    def velocity_field(self, obs: PyTorchObs, n_draws: int | None = None) -> ConditionedVelocity:
        """
        The velocity field v(x, t) of a batch of observations; features are extracted once here.

        :param obs: observations (tensors, not yet preprocessed)
        :param n_draws: when set, the field expects x of shape (batch, n_draws, action_dim), as in the CFM loss
        :return: a callable field accepted by :func:`sb3_flow.common.flow.integrate`
        """
        return self.velocity_field_from_features(self.extract_features(obs, self.features_extractor), n_draws)

    def velocity_field_from_features(self, features: th.Tensor, n_draws: int | None = None) -> ConditionedVelocity:
        """:meth:`velocity_field` for already extracted features (a caller that also needs them for a critic)."""
        conditioning = self.velocity_net.condition(features)
        if n_draws is not None:
            conditioning = conditioning.unsqueeze(1)
        return ConditionedVelocity(self.velocity_net, conditioning)

    @property
    def device(self) -> th.device:
        """
        The parameters' device. SB3's property walks the submodules for a first parameter, and sampling asks for it on
        every rollout step: the velocity network's weight is read directly instead.
        """
        velocity_net = self._modules.get("velocity_net")
        if velocity_net is None:  # still being built
            return super().device
        return velocity_net.action_projection.weight.device

    def compile_sampler(
        self, backend: str = "inductor", options: dict[str, Any] | None = None, max_graphs: int = 16
    ) -> FlowPolicy:
        """
        Opt in to the compiled sampler: every integration run without autograd (``predict``, rollouts, a steering
        wrapper's base calls, best-of-N candidates) goes through one ``torch.compile`` graph of the whole K-step loop
        per (batch shape, K, method, hooks' code, device), compiled on its first call (tens of seconds on a CPU; then
        cached by inductor on disk) and run without the per-op dispatch of eager PyTorch afterwards. Results equal the
        eager sampler's to float rounding; training (autograd) always runs eagerly. See
        :mod:`sb3_flow.common.compiled_sampler` and docs/benchmarks.md for the break-even run length.

        Only the choice travels with copies and pickles, never compiled code; a saved policy loads eager (call this
        again after ``load``). A compiler that fails gives a one-line warning and the eager sampler.

        :param backend: ``torch.compile`` backend
        :param options: inductor options (default ``{"cpp_wrapper": True}``)
        :param max_graphs: graphs compiled at most; further combinations run eagerly, with a warning
        :return: this policy
        """
        self.compiled_integrator = CompiledIntegrator(backend, options, max_graphs)
        return self

    def eager_sampler(self) -> FlowPolicy:
        """Undo :meth:`compile_sampler`: integrate with eager PyTorch again. Returns this policy."""
        self.compiled_integrator = None
        return self

    def initial_noise(self, batch_size: int, deterministic: bool = False) -> th.Tensor:
        """x0 for a batch: N(0, I), or zeros when ``deterministic``."""
        shape = (batch_size, self.action_dim)
        if deterministic:
            return th.zeros(shape, device=self.device)
        return th.randn(shape, device=self.device)

    def _check_noise(self, noise: th.Tensor, batch_size: int) -> th.Tensor:
        noise = noise.to(self.device, dtype=th.float32).reshape(noise.shape[0], -1)
        if noise.shape != (batch_size, self.action_dim):
            raise ValueError(
                f"initial noise must have shape (batch={batch_size}, action_dim={self.action_dim}), got {tuple(noise.shape)}"
            )
        return noise

    def integrate(
        self,
        obs: PyTorchObs,
        noise: th.Tensor | None = None,
        n_steps: int | None = None,
        deterministic: bool = False,
        noise_std_fn: NoiseStdFn | None = None,
        velocity_modifier: VelocityModifier | None = None,
        step_noises: th.Tensor | None = None,
        return_chain: bool = False,
    ) -> FlowSample:
        """
        Integrate the flow for a batch of observations; the result is not clipped.

        :param obs: observations (tensors)
        :param noise: initial noise x0, shape (batch, action_dim); drawn (or zero when ``deterministic``) if None
        :param n_steps: integration steps; ``self.n_flow_steps`` if None
        :param deterministic: start from zero noise when ``noise`` is None
        :param noise_std_fn: per-step noise hook (ReinFlow and SDE variants)
        :param velocity_modifier: guidance hook (x, t, v) -> v'
        :param step_noises: standard normal draws of the noisy transitions, shape (K, batch, action_dim)
        :param return_chain: also return x_0 .. x_K
        :return: a :class:`~sb3_flow.common.flow.FlowSample`
        """
        return self.integrate_field(
            self.velocity_field(obs), noise, n_steps, deterministic, noise_std_fn, velocity_modifier, step_noises, return_chain
        )

    def integrate_field(
        self,
        field: ConditionedVelocity,
        noise: th.Tensor | None = None,
        n_steps: int | None = None,
        deterministic: bool = False,
        noise_std_fn: NoiseStdFn | None = None,
        velocity_modifier: VelocityModifier | None = None,
        step_noises: th.Tensor | None = None,
        return_chain: bool = False,
        return_log_probs: bool = True,
    ) -> FlowSample:
        """:meth:`integrate` for a velocity field already conditioned on the observations."""
        n_steps = self.n_flow_steps if n_steps is None else check_n_flow_steps(n_steps)
        batch_size = field.conditioning.shape[0]
        noise = self.initial_noise(batch_size, deterministic) if noise is None else self._check_noise(noise, batch_size)
        if self.compiled_integrator is not None:
            compiled = self.compiled_integrator(
                field,
                noise,
                n_steps,
                self.integration_method,
                noise_std_fn,
                velocity_modifier,
                step_noises,
                return_chain,
                return_log_probs,
                key_extra=(id(self), self.training),
            )
            if compiled is not None:
                return compiled
        return integrate(
            field,
            noise,
            n_steps,
            method=self.integration_method,
            noise_std_fn=noise_std_fn,
            velocity_modifier=velocity_modifier,
            step_noises=step_noises,
            return_chain=return_chain,
            return_log_probs=return_log_probs,
        )

    def sample(
        self,
        obs: PyTorchObs,
        noise: th.Tensor | None = None,
        n_steps: int | None = None,
        deterministic: bool = False,
        velocity_modifier: VelocityModifier | None = None,
    ) -> th.Tensor:
        """
        Actions in the normalized box [-1, 1], shape (batch, action_dim).

        :param obs: observations (tensors)
        :param noise: explicit initial noise (DSRL steers through it); drawn if None
        :param n_steps: integration steps; ``self.n_flow_steps`` if None
        :param deterministic: start from zero noise when ``noise`` is None
        :param velocity_modifier: guidance hook (x, t, v) -> v'
        :return: clipped normalized actions
        """
        flow = self.integrate(obs, noise, n_steps, deterministic, velocity_modifier=velocity_modifier)
        return flow.actions.clamp(-1.0, 1.0)

    def cfm_loss(self, obs: PyTorchObs, actions: th.Tensor, times: th.Tensor, noises: th.Tensor) -> th.Tensor:
        """
        Per-(sample, draw) CFM loss of normalized actions on the given draws.

        :param obs: observations (tensors)
        :param actions: normalized actions, shape (batch, action_dim)
        :param times: shape (batch, n_draws)
        :param noises: shape (batch, n_draws, action_dim)
        :return: shape (batch, n_draws)
        """
        return self.cfm_loss_from_features(self.extract_features(obs, self.features_extractor), actions, times, noises)

    def cfm_loss_from_features(
        self, features: th.Tensor, actions: th.Tensor, times: th.Tensor, noises: th.Tensor
    ) -> th.Tensor:
        """:meth:`cfm_loss` for already extracted features (a caller that also feeds them to a critic)."""
        field = self.velocity_field_from_features(features, n_draws=times.shape[1])
        return flow_cfm_loss(field, actions.reshape(actions.shape[0], -1), times, noises)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self.sample(obs, deterministic=deterministic)

    def inference_kernels(self, obs: PyTorchObs) -> contextlib.AbstractContextManager:
        """
        Context for a no-grad call on ``obs`` (``predict``, a rollout step): small CPU batches run with oneDNN off,
        whose fixed per-call cost makes the exact GELU several times slower at a few rows
        (:func:`~sb3_flow.common.utils.small_batch_inference`). Nothing changes while autograd records.
        """
        if th.is_grad_enabled():
            return contextlib.nullcontext()
        n_rows = first_entry(obs).shape[0]
        return small_batch_inference(n_rows, self.device)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        with self.inference_kernels(observation):
            return self.sample(observation, deterministic=deterministic)


class CnnFlowPolicy(FlowPolicy):
    """FlowPolicy for image observations (SB3's NatureCNN features extractor); see :class:`FlowPolicy`."""

    def __init__(self, *args, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class MultiInputFlowPolicy(FlowPolicy):
    """FlowPolicy for Dict observations (SB3's CombinedExtractor); see :class:`FlowPolicy`."""

    def __init__(self, *args, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


MlpPolicy = FlowPolicy
CnnPolicy = CnnFlowPolicy
MultiInputPolicy = MultiInputFlowPolicy
