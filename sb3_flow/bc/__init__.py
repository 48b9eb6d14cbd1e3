from sb3_flow.bc.bc import BaseBC, FlowBC, GaussianBC
from sb3_flow.bc.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["BaseBC", "CnnPolicy", "FlowBC", "GaussianBC", "MlpPolicy", "MultiInputPolicy"]
