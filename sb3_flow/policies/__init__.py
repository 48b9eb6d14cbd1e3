from sb3_flow.policies.actor_critic import (
    CnnFlowActorCriticPolicy,
    FlowActorCriticPolicy,
    MultiInputFlowActorCriticPolicy,
)
from sb3_flow.policies.conditional import ConditionalFlowPolicy
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
from sb3_flow.policies.return_head import ReturnHeadFlowPolicy

__all__ = [
    "BestOfNPolicy",
    "CnnFlowActorCriticPolicy",
    "CnnFlowPolicy",
    "CnnGaussianPolicy",
    "CnnPolicy",
    "ConditionalFlowPolicy",
    "CriticGuidedPolicy",
    "FlowActorCriticPolicy",
    "FlowPolicy",
    "GaussianPolicy",
    "MlpPolicy",
    "MultiInputFlowActorCriticPolicy",
    "MultiInputFlowPolicy",
    "MultiInputGaussianPolicy",
    "MultiInputPolicy",
    "ReturnHeadFlowPolicy",
    "load_flow_policy",
]
