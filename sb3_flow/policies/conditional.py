"""ConditionalFlowPolicy: a flow policy conditioned on a label with a null value, sampled with classifier-free guidance
(CFGRL's optimality conditioning; the advantage indicator of pi0.6*-style RECAP)."""

from __future__ import annotations

from typing import Any

import torch as th
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from sb3_flow.common.flow import GridStep, VelocityModifier
from sb3_flow.common.flow import cfm_loss as flow_cfm_loss
from sb3_flow.common.networks import ConditionedVelocity, VelocityNetwork
from sb3_flow.common.utils import check_finite_number, check_positive_int
from sb3_flow.policies.flow_policy import FlowPolicy
from sb3_flow.policies.loading import copy_flow_weights

# The label that means "no label": the unconditional (behaviour-cloning) branch.
NULL_LABEL = 0


class GuidedVelocity:
    """
    Classifier-free guidance of two conditionings of one network: ``v = v_null + w * (v_label - v_null)``
    (Ho and Salimans, 2022; CFGRL: Frans et al., 2025). Both branches are one batched network call per evaluation.

    :param network: the velocity network
    :param null_conditioning: first-layer conditioning of the null label, shape (batch, hidden)
    :param label_conditioning: that of the guided label, same shape
    :param guidance_weight: w (0: the null branch, 1: the labelled branch, > 1: extrapolated past it)
    """

    def __init__(
        self,
        network: VelocityNetwork,
        null_conditioning: th.Tensor,
        label_conditioning: th.Tensor,
        guidance_weight: float,
    ):
        self.guidance_weight = guidance_weight
        self.conditioning = null_conditioning  # rows = batch, as integrate callers read it
        self.both = ConditionedVelocity(network, th.cat([null_conditioning, label_conditioning]))

    def _combine(self, velocities: th.Tensor) -> th.Tensor:
        null, labelled = velocities.chunk(2)
        return th.add(null, labelled - null, alpha=self.guidance_weight)

    def __call__(self, x: th.Tensor, t: th.Tensor) -> th.Tensor:
        if t.dim() > 0:  # per-row times: the same times for both halves
            t = th.cat([t, t])
        return self._combine(self.both(th.cat([x, x]), t))

    def on_grid(self, times: th.Tensor) -> GridStep:
        both_step = self.both.on_grid(times)
        return lambda x, i: self._combine(both_step(th.cat([x, x]), i))


class ConditionalFlowPolicy(FlowPolicy):
    """
    A :class:`FlowPolicy` whose velocity network also sees a label ``c`` in ``{null, 1, ..., n_labels}``: a learned
    embedding of the label is added to the observation half of the first layer. Trained with the label dropped to null
    part of the time, one network learns the unconditional flow (null) and the labelled ones.

    Sampling uses classifier-free guidance toward ``guided_label``:
    ``v = v(s, x, t, null) + w * (v(s, x, t, guided) - v(s, x, t, null))``. The guidance weight ``w``
    (``guidance_weight``) is a test-time knob: change it on the policy (or pass it to :meth:`sample`) without
    retraining; it is saved with the policy. ``w = 0`` samples the unconditional flow exactly (one branch is
    evaluated), ``w = 1`` the labelled flow; ``w > 1`` sharpens toward the label (CFGRL's claim is that some ``w > 1``
    beats both).

    Paper: https://arxiv.org/abs/2505.23458 (Frans, Park, Abbeel and Levine, 2025, "Diffusion Guidance Is a
    Controllable Policy Improvement Operator")
    Reference implementation: https://github.com/kvfrans/cfgrl_submit (``ogbench/agents/flowiql.py``)

    :param n_labels: number of labels besides null (CFGRL: 2, "not optimal" = 1 and "optimal" = 2)
    :param guidance_weight: w, finite
    :param guided_label: the label guided toward (default: the last, ``n_labels``)
    :param args: see :class:`FlowPolicy`
    :param kwargs: see :class:`FlowPolicy`
    """

    def __init__(
        self,
        *args: Any,
        n_labels: int = 2,
        guidance_weight: float = 1.0,
        guided_label: int | None = None,
        **kwargs: Any,
    ):
        self.n_labels = check_positive_int(n_labels, "n_labels")
        guided_label = self.n_labels if guided_label is None else guided_label
        if isinstance(guided_label, bool) or not isinstance(guided_label, int) or not 1 <= guided_label <= self.n_labels:
            raise ValueError(f"guided_label must be an integer in [1, n_labels={self.n_labels}], got {guided_label!r}")
        self.guided_label = guided_label
        self._guidance_weight = check_finite_number(guidance_weight, "guidance_weight")
        super().__init__(*args, **kwargs)

    @property
    def guidance_weight(self) -> float:
        """w: the guidance weight used by ``predict`` and :meth:`sample` (set it to change the policy at test time)."""
        return self._guidance_weight

    @guidance_weight.setter
    def guidance_weight(self, value: float) -> None:
        self._guidance_weight = check_finite_number(value, "guidance_weight")

    def _build_extra_networks(self) -> None:
        first_layer_size = self.velocity_net.observation_projection.out_features
        self.label_embedding = nn.Embedding(self.n_labels + 1, first_layer_size)
        # Zero at the start: every label begins as the unconditional flow, and learns its difference from it.
        nn.init.zeros_(self.label_embedding.weight)

    def test_time_knobs(self) -> dict[str, Any]:
        return {**super().test_time_knobs(), "guidance_weight": self.guidance_weight}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(n_labels=self.n_labels, guided_label=self.guided_label, **self.test_time_knobs())
        return data

    def check_labels(self, labels: th.Tensor) -> th.Tensor:
        """
        :param labels: one integer label per row
        :return: them as a long tensor on the policy's device
        :raises TypeError: for labels that are not integers
        :raises ValueError: for values outside ``[0, n_labels]`` (this check reads the values back from the device)
        """
        labels = th.as_tensor(labels, device=self.device)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == th.bool:
            raise TypeError(f"labels must be integers in [0 (null), {self.n_labels}], got a {labels.dtype} tensor")
        labels = labels.long().reshape(-1)
        if labels.numel() and (int(labels.min()) < NULL_LABEL or int(labels.max()) > self.n_labels):
            raise ValueError(f"labels must be in [0 (null), {self.n_labels}], got values in [{labels.min()}, {labels.max()}]")
        return labels

    def labelled_conditioning(self, features: th.Tensor, labels: th.Tensor | int) -> th.Tensor:
        """
        First-layer conditioning of observations with labels, shape (batch, hidden).

        :param features: observation features, shape (batch, features_dim)
        :param labels: one label per row (a long tensor), or one label (an int) for all rows
        """
        conditioning = self.velocity_net.condition(features)
        if isinstance(labels, int):
            return conditioning + self.label_embedding.weight[labels]
        return conditioning + self.label_embedding(labels)

    def labelled_cfm_loss(
        self,
        obs: PyTorchObs,
        actions: th.Tensor,
        labels: th.Tensor,
        times: th.Tensor,
        noises: th.Tensor,
        check_labels: bool = True,
    ) -> th.Tensor:
        """
        Per-(sample, draw) CFM loss of the flow conditioned on ``labels`` (null = 0 trains the unconditional flow).

        :param obs: observations (tensors)
        :param actions: normalized actions, shape (batch, action_dim)
        :param labels: one label per row, shape (batch,)
        :param times: shape (batch, n_draws)
        :param noises: shape (batch, n_draws, action_dim)
        :param check_labels: check the labels' type and range (labels made by the caller's own code can skip the check,
            which reads them back from the device)
        :return: shape (batch, n_draws)
        """
        features = self.extract_features(obs, self.features_extractor)
        labels = self.check_labels(labels) if check_labels else labels
        conditioning = self.labelled_conditioning(features, labels).unsqueeze(1)
        return flow_cfm_loss(
            ConditionedVelocity(self.velocity_net, conditioning), actions.reshape(len(actions), -1), times, noises
        )

    def velocity_field_from_features(
        self, features: th.Tensor, n_draws: int | None = None, guidance_weight: float | None = None
    ) -> ConditionedVelocity | GuidedVelocity:
        """
        The guided field of :class:`GuidedVelocity` (one branch only at ``w = 0`` or ``w = 1``). The unguided
        :meth:`cfm_loss` of :class:`FlowPolicy` therefore trains the guided field; train with :meth:`labelled_cfm_loss`.

        :param features: observation features, shape (batch, features_dim)
        :param n_draws: when set, the field expects x of shape (batch, n_draws, action_dim)
        :param guidance_weight: w for this call (default: ``self.guidance_weight``)
        """
        weight = self.guidance_weight if guidance_weight is None else check_finite_number(guidance_weight, "guidance_weight")
        if weight in (0.0, 1.0):
            conditioning = self.labelled_conditioning(features, NULL_LABEL if weight == 0.0 else self.guided_label)
            return ConditionedVelocity(self.velocity_net, conditioning if n_draws is None else conditioning.unsqueeze(1))
        if n_draws is not None:
            raise ValueError("guided sampling (w not in {0, 1}) takes x of shape (batch, action_dim), without draws")
        null = self.labelled_conditioning(features, NULL_LABEL)
        guided = self.labelled_conditioning(features, self.guided_label)
        return GuidedVelocity(self.velocity_net, null, guided, weight)

    def sample(
        self,
        obs: PyTorchObs,
        noise: th.Tensor | None = None,
        n_steps: int | None = None,
        deterministic: bool = False,
        velocity_modifier: VelocityModifier | None = None,
        guidance_weight: float | None = None,
    ) -> th.Tensor:
        """
        :meth:`FlowPolicy.sample` with guidance weight ``guidance_weight`` (default: the policy's).
        """
        if guidance_weight is None:
            return super().sample(obs, noise, n_steps, deterministic, velocity_modifier)
        field = self.velocity_field_from_features(self.extract_features(obs, self.features_extractor), None, guidance_weight)
        flow = self.integrate_field(field, noise, n_steps, deterministic, velocity_modifier=velocity_modifier)
        return flow.actions.clamp(-1.0, 1.0)

    def unconditional_flow(self) -> FlowPolicy:
        """
        A new plain :class:`FlowPolicy` equal to this policy's unconditional (null-label) flow: the null embedding is
        folded into the first layer's bias. Use it where a method needs a base policy (the guided sampler is not one
        velocity network).
        """
        flow = copy_flow_weights(self)
        with th.no_grad():
            null_embedding = self.label_embedding.weight[NULL_LABEL].to(flow.device)
            flow.velocity_net.observation_projection.bias.add_(null_embedding)
        return flow


class CnnConditionalFlowPolicy(ConditionalFlowPolicy):
    """ConditionalFlowPolicy with SB3's NatureCNN features extractor."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class MultiInputConditionalFlowPolicy(ConditionalFlowPolicy):
    """ConditionalFlowPolicy with SB3's CombinedExtractor, for Dict observations."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)
