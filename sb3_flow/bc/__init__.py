from sb3_flow.bc.bc import BaseBC, FlowBC, GaussianBC
from sb3_flow.bc.distillation import SteeredPolicy, collect_steered_demonstrations, distill, filter_episodes, steered_policy
from sb3_flow.bc.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = [
    "BaseBC",
    "CnnPolicy",
    "FlowBC",
    "GaussianBC",
    "MlpPolicy",
    "MultiInputPolicy",
    "SteeredPolicy",
    "collect_steered_demonstrations",
    "distill",
    "filter_episodes",
    "steered_policy",
]
