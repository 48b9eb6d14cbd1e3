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
    "CnnFlowPolicy",
    "CnnGaussianPolicy",
    "CnnPolicy",
    "FlowPolicy",
    "GaussianPolicy",
    "MlpPolicy",
    "MultiInputFlowPolicy",
    "MultiInputGaussianPolicy",
    "MultiInputPolicy",
    "load_flow_policy",
]
