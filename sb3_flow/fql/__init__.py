from sb3_flow.fql.fql import FQL
from sb3_flow.fql.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["FQL", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
