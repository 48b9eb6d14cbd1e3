from sb3_flow.policies.actor_critic import (
    CnnFlowActorCriticPolicy,
    FlowActorCriticPolicy,
    MultiInputFlowActorCriticPolicy,
)
from sb3_flow.policies.conditional import (
    CnnConditionalFlowPolicy,
    ConditionalFlowPolicy,
    MultiInputConditionalFlowPolicy,
)
from sb3_flow.policies.critic_samplers import BestOfNPolicy, CriticGuidedPolicy
from sb3_flow.policies.flow_policy import (
    CnnFlowPolicy,
    CnnPolicy,
    FlowPolicy,
    MlpPolicy,
    MultiInputFlowPolicy,
    MultiInputPolicy,
)
from sb3_flow.policies.gaussian import CnnGaussianPolicy, GaussianPolicy, MultiInputGaussianPolicy
from sb3_flow.policies.loading import load_flow_policy
from sb3_flow.policies.return_head import (
    CnnReturnHeadFlowPolicy,
    MultiInputReturnHeadFlowPolicy,
    ReturnHeadFlowPolicy,
)
from sb3_flow.policies.variance_residual import (
    MultiInputVarianceResidualPolicy,
    MultiInputVarianceResidualSACPolicy,
    VarianceResidualPolicy,
    VarianceResidualSACPolicy,
)

__all__ = [
    "BestOfNPolicy",
    "CnnConditionalFlowPolicy",
    "CnnFlowActorCriticPolicy",
    "CnnFlowPolicy",
    "CnnGaussianPolicy",
    "CnnPolicy",
    "CnnReturnHeadFlowPolicy",
    "ConditionalFlowPolicy",
    "CriticGuidedPolicy",
    "FlowActorCriticPolicy",
    "FlowPolicy",
    "GaussianPolicy",
    "MlpPolicy",
    "MultiInputConditionalFlowPolicy",
    "MultiInputFlowActorCriticPolicy",
    "MultiInputFlowPolicy",
    "MultiInputGaussianPolicy",
    "MultiInputPolicy",
    "MultiInputReturnHeadFlowPolicy",
    "MultiInputVarianceResidualPolicy",
    "MultiInputVarianceResidualSACPolicy",
    "ReturnHeadFlowPolicy",
    "VarianceResidualPolicy",
    "VarianceResidualSACPolicy",
    "load_flow_policy",
]
