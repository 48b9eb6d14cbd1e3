from sb3_flow.policies.actor_critic import (
    CnnFlowActorCriticPolicy,
    FlowActorCriticPolicy,
    MultiInputFlowActorCriticPolicy,
)
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

__all__ = [
    "CnnFlowActorCriticPolicy",
    "CnnFlowPolicy",
    "CnnGaussianPolicy",
    "CnnPolicy",
    "FlowActorCriticPolicy",
    "FlowPolicy",
    "GaussianPolicy",
    "MlpPolicy",
    "MultiInputFlowActorCriticPolicy",
    "MultiInputFlowPolicy",
    "MultiInputGaussianPolicy",
    "MultiInputPolicy",
    "load_flow_policy",
]
