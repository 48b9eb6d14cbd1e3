from sb3_flow.ifql.ifql import IFQL
from sb3_flow.ifql.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["IFQL", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
