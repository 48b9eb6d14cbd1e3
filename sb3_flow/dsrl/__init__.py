from sb3_flow.dsrl.dsrl_na import DSRLNA
from sb3_flow.dsrl.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["DSRLNA", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
