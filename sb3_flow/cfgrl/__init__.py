from sb3_flow.cfgrl.cfgrl import CFGRL
from sb3_flow.cfgrl.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["CFGRL", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
