from sb3_flow.fpo.fpo import FlowPPO
from sb3_flow.fpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["CnnPolicy", "FlowPPO", "MlpPolicy", "MultiInputPolicy"]
