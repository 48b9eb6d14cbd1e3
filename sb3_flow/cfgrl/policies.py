"""CFGRL's policy: IQL critics beside a flow conditioned on an optimality label, sampled with a guidance weight."""

from __future__ import annotations

from typing import Any, ClassVar

from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN

from sb3_flow.common.utils import check_finite_number
from sb3_flow.policies.conditional import ConditionalFlowPolicy
from sb3_flow.policies.flow_policy import FlowPolicy
from sb3_flow.policies.flow_q import InSampleFlowQPolicy

# The labels of CFGRL's flow: null (unconditional) = 0, "advantage below the threshold" = 1, "at or above" = 2.
NOT_OPTIMAL_LABEL = 1
OPTIMAL_LABEL = 2


class CFGRLPolicy(InSampleFlowQPolicy):
    """
    The networks of :class:`~sb3_flow.policies.flow_q.InSampleFlowQPolicy` with a
    :class:`~sb3_flow.policies.conditional.ConditionalFlowPolicy` as ``bc_policy`` (labels null / not optimal /
    optimal), guided toward "optimal" with weight ``guidance_weight`` (w) when acting. w is a test-time knob:
    ``model.policy.guidance_weight = 3.0`` changes the policy without retraining and is saved with it. By default
    (``n_samples=1``) it acts by guided sampling alone; ``n_samples > 1`` adds best-of-N on top.

    :param guidance_weight: w (CFGRL's code: 1.0; its evaluations sweep 0.5 to 10)
    :param args: see :class:`~sb3_flow.policies.flow_q.InSampleFlowQPolicy`
    :param kwargs: see :class:`~sb3_flow.policies.flow_q.InSampleFlowQPolicy`
    """

    flow_policy_class: ClassVar[type[FlowPolicy]] = ConditionalFlowPolicy
    bc_policy: ConditionalFlowPolicy

    def __init__(self, *args: Any, guidance_weight: float = 1.0, n_samples: int = 1, **kwargs: Any):
        self._initial_guidance_weight = check_finite_number(guidance_weight, "guidance_weight")
        super().__init__(*args, n_samples=n_samples, **kwargs)

    def _flow_policy_kwargs(self) -> dict[str, Any]:
        return {"n_labels": OPTIMAL_LABEL, "guidance_weight": self._initial_guidance_weight, "guided_label": OPTIMAL_LABEL}

    @property
    def guidance_weight(self) -> float:
        """w, the guidance weight toward "optimal" (set it to change the policy at test time)."""
        return self.bc_policy.guidance_weight

    @guidance_weight.setter
    def guidance_weight(self, value: float) -> None:
        self.bc_policy.guidance_weight = value

    def test_time_knobs(self) -> dict[str, Any]:
        return {**super().test_time_knobs(), "guidance_weight": self.guidance_weight}


class CnnCFGRLPolicy(CFGRLPolicy):
    """CFGRLPolicy with SB3's NatureCNN features extractors."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class MultiInputCFGRLPolicy(CFGRLPolicy):
    """CFGRLPolicy with SB3's CombinedExtractor, for Dict observations."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


MlpPolicy = CFGRLPolicy
CnnPolicy = CnnCFGRLPolicy
MultiInputPolicy = MultiInputCFGRLPolicy
