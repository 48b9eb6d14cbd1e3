"""Improving a flow policy by how it is sampled, with a critic: best-of-N selection and critic-gradient guidance.

Both take any flow base (a :class:`~sb3_flow.policies.FlowPolicy`, including a conditional one, or a model holding
one) and any critic with a Q ensemble: an sb3-flow policy with ``q_values`` (FQL's, IFQL's, CFGRL's, a return head's)
or an SB3 policy with a ``critic`` (SAC's, TD3's), or a model holding one. Their knobs (N, the selection rule,
lambda) are attributes, saved with the policy and changed at test time without retraining.
"""

from __future__ import annotations

import copy
import functools
import os
import pickle
import struct
import zipfile
from typing import Any, TypeVar

import torch as th
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import data_to_json, json_to_data
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.common.utils import get_device

from sb3_flow.common.critics import Q_AGGREGATIONS, aggregate_q
from sb3_flow.common.files import atomic_target, existing_file
from sb3_flow.common.guidance import critic_gradient_guidance
from sb3_flow.common.observations import first_entry, index_rows
from sb3_flow.common.utils import check_box_action_space, check_finite_number, check_positive_int, spaces_match
from sb3_flow.policies.conditional import ConditionalFlowPolicy
from sb3_flow.policies.flow_policy import FlowPolicy
from sb3_flow.policies.loading import flow_part, load_flow_policy

SELECTION_RULES = ("argmax", "softmax")
SAMPLER_FILE_FORMAT = "sb3_flow.critic_sampler.v1"
SelfSampler = TypeVar("SelfSampler", bound="CriticSamplerPolicy")


def critic_policy(source: Any) -> BasePolicy:
    """
    The policy that holds a critic: ``source`` itself or a model's ``.policy``.

    :param source: a policy or a model
    :raises TypeError: when it has neither ``q_values`` (sb3-flow) nor a ``critic`` module (SB3's SAC, TD3, DDPG)
    """
    policy = getattr(source, "policy", source)
    if isinstance(policy, BasePolicy) and (
        hasattr(policy, "q_values") or isinstance(getattr(policy, "critic", None), th.nn.Module)
    ):
        return policy
    raise TypeError(
        "critic must be an sb3-flow policy or model with Q-values (FQL, IFQL, CFGRL, a return head) or an SB3 policy or "
        f"model with a critic (SAC, TD3, DDPG); got {type(source).__name__}"
    )


def critic_q_values(critic: BasePolicy, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
    """
    Q-values of every network of a critic policy (see :func:`critic_policy`).

    :param critic: the policy
    :param obs: observations (tensors)
    :param actions: normalized actions, shape (batch, action_dim)
    :return: shape (n_critics, batch)
    """
    if hasattr(critic, "q_values"):
        return critic.q_values(obs, actions)
    return th.cat(critic.critic(obs, actions), dim=1).T


@functools.lru_cache(maxsize=16)
def deterministic_noises(n_samples: int, action_dim: int, device: th.device) -> th.Tensor:
    """
    The N initial noises of a deterministic best-of-N call: zero (the flow's deterministic action) first, then fixed
    standard normal draws (seed 0, not from the global generator), so that deterministic predictions repeat.
    Cached: never modify the result in place.

    :param n_samples: N
    :param action_dim: size of the flattened action
    :param device: where the noises go
    :return: shape (N, action_dim)
    """
    generator = th.Generator().manual_seed(0)
    draws = th.randn((n_samples - 1, action_dim), generator=generator)
    return th.cat([th.zeros(1, action_dim), draws]).to(device)


class GuidanceScaleKnob:
    """Critic-gradient guidance's test-time knob as a validated attribute: ``guidance_scale`` (lambda, finite)."""

    _guidance_scale: float

    @property
    def guidance_scale(self) -> float:
        """lambda; 0 samples the flow exactly (set it to change the policy at test time)."""
        return self._guidance_scale

    @guidance_scale.setter
    def guidance_scale(self, value: float) -> None:
        self._guidance_scale = check_finite_number(value, "guidance_scale")


class BestOfNKnobs:
    """
    Best-of-N's test-time knobs as validated attributes: ``n_samples`` (N, a positive integer), ``selection``
    ("argmax" or "softmax") and ``temperature`` (a finite number > 0). Setting one changes how the policy acts, without
    retraining; the policies save them.
    """

    _n_samples: int
    _selection: str
    _temperature: float

    @property
    def n_samples(self) -> int:
        """N, the actions drawn per observation."""
        return self._n_samples

    @n_samples.setter
    def n_samples(self, value: int) -> None:
        self._n_samples = check_positive_int(value, "n_samples")

    @property
    def selection(self) -> str:
        """ "argmax" (the best candidate) or "softmax" (one drawn with probabilities softmax(Q / temperature))."""
        return self._selection

    @selection.setter
    def selection(self, value: str) -> None:
        if value not in SELECTION_RULES:
            raise ValueError(f"selection must be one of {SELECTION_RULES}, got {value!r}")
        self._selection = value

    @property
    def temperature(self) -> float:
        """The softmax temperature."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_finite_number(value, "temperature", minimum=0.0, strict=True)

    def best_of_n_knobs(self) -> dict[str, Any]:
        """The three knobs, as constructor arguments."""
        return {"n_samples": self.n_samples, "selection": self.selection, "temperature": self.temperature}


def best_of_n_actions(
    flow: FlowPolicy,
    score: Any,
    obs: PyTorchObs,
    n_samples: int,
    selection: str = "argmax",
    temperature: float = 1.0,
    deterministic: bool = False,
) -> th.Tensor:
    """
    Draw ``n_samples`` actions per observation from ``flow`` in one batched integration of ``N * batch`` rows (the
    observation features are computed once per observation), score them, and keep one per observation.

    :param flow: the flow policy
    :param score: ``score(obs_rows, actions) -> (rows,)``, the aggregated Q of normalized actions
    :param obs: observations (tensors), ``batch`` rows
    :param n_samples: N
    :param selection: "argmax" (IDQL / IFQL) or "softmax" (SfBC: sample with probabilities softmax(Q / temperature))
    :param temperature: softmax temperature (SfBC's alpha = 20 is a temperature of 0.05)
    :param deterministic: fixed noises (:func:`deterministic_noises`) and argmax selection
    :return: normalized actions, shape (batch, action_dim)
    """
    batch = first_entry(obs).shape[0]
    device = flow.device
    rows = th.arange(batch, device=device).repeat_interleave(n_samples)
    features = flow.extract_features(obs, flow.features_extractor)
    field = flow.velocity_field_from_features(features[rows])
    if deterministic:
        noise = deterministic_noises(n_samples, flow.action_dim, device).repeat(batch, 1)
    else:
        noise = th.randn((batch * n_samples, flow.action_dim), device=device)
    candidates = flow.integrate_field(field, noise).actions.clamp(-1.0, 1.0)
    q = score(index_rows(obs, rows), candidates).reshape(batch, n_samples)
    if selection == "argmax" or deterministic:
        choice = q.argmax(dim=1)
    else:
        choice = th.multinomial(th.softmax(q / temperature, dim=1), 1).squeeze(1)
    return candidates.reshape(batch, n_samples, -1)[th.arange(batch, device=device), choice]


def _flow_copy(base: Any) -> FlowPolicy:
    """
    A private copy of a flow base: of a FlowPolicy or of a model's (``.policy``, or FQL-style ``.bc_policy``), only the
    flow (:func:`~sb3_flow.policies.loading.flow_part`), except that a conditional flow is copied whole and keeps its
    guidance; or the plain flow of a saved file (:func:`~sb3_flow.policies.loading.load_flow_policy`).
    """
    for candidate in (base, getattr(base, "policy", None), getattr(base, "bc_policy", None)):
        if isinstance(candidate, ConditionalFlowPolicy):
            return copy.deepcopy(candidate)
        if isinstance(candidate, FlowPolicy):
            return flow_part(candidate)
    return load_flow_policy(base)


class CriticSamplerPolicy(BasePolicy):
    """
    Base of the samplers: a private copy of a flow base and of a critic policy (the caller's objects are never changed
    or trained), the aggregation over the critic's networks, SB3's ``predict``, and ``save`` / ``load``.

    :param base: the flow (FlowPolicy, a model holding one, or a saved one's path)
    :param critic: the critic (see :func:`critic_policy`)
    :param q_agg: "mean" or "min" over the critic's networks
    """

    def __init__(self, base: Any, critic: Any, q_agg: str = "mean"):
        flow = _flow_copy(base)
        critic_copy = copy.deepcopy(critic_policy(critic))
        if q_agg not in Q_AGGREGATIONS:
            raise ValueError(f"q_agg must be one of {Q_AGGREGATIONS}, got {q_agg!r}")
        if critic_copy.action_space.shape != flow.action_space.shape or not spaces_match(
            flow.action_space, critic_copy.action_space
        ):
            raise ValueError(
                f"the critic's action space {critic_copy.action_space} differs from the flow's {flow.action_space}: "
                "it cannot score the flow's actions"
            )
        if not spaces_match(flow.observation_space, critic_copy.observation_space):
            raise ValueError(
                f"the critic's observation space {critic_copy.observation_space} differs from the flow's "
                f"{flow.observation_space}"
            )
        super().__init__(flow.observation_space, check_box_action_space(flow.action_space), squash_output=True)
        self.flow = flow
        self.critic_policy = critic_copy.to(flow.device)
        self.q_agg = q_agg
        self.set_training_mode(False)

    @property
    def device(self) -> th.device:
        return self.flow.device

    def score(self, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """The critic's aggregated Q of normalized actions, shape (batch,)."""
        return aggregate_q(critic_q_values(self.critic_policy, obs, actions), self.q_agg)

    def test_time_knobs(self) -> dict[str, Any]:
        """The settings that change how the sampler acts without retraining, as constructor arguments (saved)."""
        return {"q_agg": self.q_agg}

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self._predict(obs, deterministic)

    def save(self, path: str | os.PathLike) -> None:
        """
        Save the flow, the critic and the knobs (``Class.load(path)`` restores them); the file is replaced only once
        the new one is complete.
        """
        classes = {
            "flow_class": type(self.flow),
            "flow_data": self.flow._get_constructor_parameters(),
            "critic_class": type(self.critic_policy),
            "critic_data": self.critic_policy._get_constructor_parameters(),
            "knobs": self.test_time_knobs(),
        }
        contents = {
            "format": SAMPLER_FILE_FORMAT,
            "policy_class": type(self).__name__,
            "data": data_to_json(classes),
            "flow_state": self.flow.state_dict(),
            "critic_state": self.critic_policy.state_dict(),
        }
        with atomic_target(path) as temporary:
            th.save(contents, temporary)

    @classmethod
    def load(cls: type[SelfSampler], path: str | os.PathLike, device: th.device | str = "auto") -> SelfSampler:  # type: ignore[override]
        """
        Load a sampler written by ``save``. The weights load with ``torch.load(weights_only=True)``; the classes and
        spaces are unpickled from SB3's JSON as in SB3's model zips: only load files you trust.

        :raises FileNotFoundError: when the file does not exist
        :raises ValueError: when it is not a saved sampler of this class
        """
        path = existing_file(path, what=f"saved {cls.__name__}")
        device = get_device(device)
        try:
            saved = th.load(path, map_location=device, weights_only=True)
        except (
            pickle.UnpicklingError, RuntimeError, OSError, EOFError, zipfile.BadZipFile, struct.error, KeyError, IndexError,
            ValueError,
        ) as error:  # fmt: skip
            raise ValueError(f"{path} is not a readable {cls.__name__} file: {error}") from error
        if not isinstance(saved, dict) or saved.get("format") != SAMPLER_FILE_FORMAT:
            raise ValueError(f"{path} is not a file written by {cls.__name__}.save")
        if saved.get("policy_class") != cls.__name__:
            raise ValueError(f"{path} holds a {saved.get('policy_class')}, not a {cls.__name__}")
        try:
            data = json_to_data(saved["data"])
            flow = data["flow_class"](**data["flow_data"])
            flow.load_state_dict(saved["flow_state"])
            critic = data["critic_class"](**data["critic_data"])
            critic.load_state_dict(saved["critic_state"])
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise ValueError(f"{path}: the {cls.__name__} could not be rebuilt: {error}") from error
        return cls(flow.to(device), critic.to(device), **data["knobs"])


class BestOfNPolicy(BestOfNKnobs, CriticSamplerPolicy):
    """
    Best-of-N with a critic: draw N actions from the flow (one batched integration of ``N * batch`` rows), score them
    with the critic, keep the best (``"argmax"``, IDQL / IFQL) or sample one with probabilities
    ``softmax(Q / temperature)`` (``"softmax"``, SfBC). ``deterministic=True`` uses N fixed noises (the first is zero)
    and argmax.

    Papers: IDQL, https://arxiv.org/abs/2304.10573 (Hansen-Estruch et al., 2023); SfBC,
    https://arxiv.org/abs/2209.14548 (Chen et al., 2023); IFQL in https://arxiv.org/abs/2502.02538 (Park et al., 2025)
    Reference implementation: https://github.com/seohongpark/fql (``agents/ifql.py``, ``sample_actions``)

    :param base: the flow (FlowPolicy, a model holding one, or a saved one's path)
    :param critic: the critic (an sb3-flow or SB3 policy or model with Q-networks)
    :param n_samples: N (IFQL / QC: 32; IDQL: 64)
    :param selection: "argmax" or "softmax"
    :param temperature: softmax temperature
    :param q_agg: "mean" or "min" over the critic's networks (IFQL's sampler: min)
    """

    def __init__(
        self,
        base: Any,
        critic: Any,
        n_samples: int = 32,
        selection: str = "argmax",
        temperature: float = 1.0,
        q_agg: str = "mean",
    ):
        super().__init__(base, critic, q_agg)
        self.n_samples, self.selection, self.temperature = n_samples, selection, temperature

    def test_time_knobs(self) -> dict[str, Any]:
        return {**super().test_time_knobs(), **self.best_of_n_knobs()}

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        with self.flow.inference_kernels(observation):
            return best_of_n_actions(
                self.flow, self.score, observation, self.n_samples, self.selection, self.temperature, deterministic
            )


class CriticGuidedPolicy(GuidanceScaleKnob, CriticSamplerPolicy):
    """
    Critic-gradient guidance: every integration step of the flow is pushed up the critic's gradient,
    ``v' = v + guidance_scale * grad_a Q(s, x_t + (1 - t) v)``
    (:func:`~sb3_flow.common.guidance.critic_gradient_guidance`); learning-free, the flow is not trained.
    ``guidance_scale = 0`` samples the flow exactly.

    Reference implementations: https://github.com/Sjtu-hyg/qgf (``agents/qgf.py``), https://github.com/ColinQiyangLi/qam
    (``agents/cgql.py``)

    :param base: the flow (FlowPolicy, a model holding one, or a saved one's path)
    :param critic: the critic (an sb3-flow or SB3 policy or model with Q-networks, or a flow with a return head)
    :param guidance_scale: lambda, finite (QGF: 0.01 to 0.1 for its Q scale)
    :param q_agg: "mean" or "min" over the critic's networks (QGF: min)
    """

    def __init__(self, base: Any, critic: Any, guidance_scale: float = 0.1, q_agg: str = "mean"):
        super().__init__(base, critic, q_agg)
        self.guidance_scale = guidance_scale

    def test_time_knobs(self) -> dict[str, Any]:
        return {**super().test_time_knobs(), "guidance_scale": self.guidance_scale}

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return guided_sample(self.flow, self.score, observation, self.guidance_scale, deterministic)


def guided_sample(
    flow: FlowPolicy, score: Any, obs: PyTorchObs, guidance_scale: float, deterministic: bool = False
) -> th.Tensor:
    """
    Sample ``flow`` with critic-gradient guidance of scale ``guidance_scale`` (exactly the flow's sample at 0).

    :param flow: the flow policy
    :param score: ``score(obs, actions) -> (batch,)``, the aggregated Q of normalized actions
    :param obs: observations (tensors)
    :param guidance_scale: lambda
    :param deterministic: start from zero noise
    :return: normalized actions, shape (batch, action_dim)
    """
    if guidance_scale == 0.0:
        return flow.sample(obs, deterministic=deterministic)
    modifier = critic_gradient_guidance(functools.partial(score, obs), guidance_scale)
    return flow.sample(obs, deterministic=deterministic, velocity_modifier=modifier)


__all__ = [
    "SELECTION_RULES",
    "BestOfNKnobs",
    "BestOfNPolicy",
    "CriticGuidedPolicy",
    "CriticSamplerPolicy",
    "GuidanceScaleKnob",
    "best_of_n_actions",
    "critic_policy",
    "critic_q_values",
    "deterministic_noises",
    "guided_sample",
]
