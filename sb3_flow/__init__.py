"""sb3-flow: flow-matching policies for Stable-Baselines3."""

from sb3_flow.bc import FlowBC, GaussianBC, SteeredPolicy, collect_steered_demonstrations, distill, steered_policy
from sb3_flow.cfgrl import CFGRL
from sb3_flow.common.demonstrations import ChunkedDemonstrations, Demonstrations, collect_demonstrations, from_minari
from sb3_flow.common.utils import set_torch_threads
from sb3_flow.dsrl import DSRLNA
from sb3_flow.fbrac import FBRAC
from sb3_flow.fpo import FlowPPO
from sb3_flow.fql import FQL
from sb3_flow.ifql import IFQL
from sb3_flow.policies import (
    BestOfNPolicy,
    ConditionalFlowPolicy,
    CriticGuidedPolicy,
    FlowPolicy,
    GaussianPolicy,
    ReturnHeadFlowPolicy,
    VarianceResidualPolicy,
    VarianceResidualSACPolicy,
    load_flow_policy,
)
from sb3_flow.reinflow import ReinFlow
from sb3_flow.wrappers import ActionChunkWrapper, make_chunked_vec_env

__version__ = "0.1.0"

__all__ = [
    "CFGRL",
    "DSRLNA",
    "FBRAC",
    "FQL",
    "IFQL",
    "ActionChunkWrapper",
    "BestOfNPolicy",
    "ChunkedDemonstrations",
    "ConditionalFlowPolicy",
    "CriticGuidedPolicy",
    "Demonstrations",
    "FlowBC",
    "FlowPPO",
    "FlowPolicy",
    "GaussianBC",
    "GaussianPolicy",
    "ReinFlow",
    "ReturnHeadFlowPolicy",
    "SteeredPolicy",
    "VarianceResidualPolicy",
    "VarianceResidualSACPolicy",
    "collect_demonstrations",
    "collect_steered_demonstrations",
    "distill",
    "from_minari",
    "load_flow_policy",
    "make_chunked_vec_env",
    "set_torch_threads",
    "steered_policy",
]
