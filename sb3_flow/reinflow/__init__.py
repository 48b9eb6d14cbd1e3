from sb3_flow.reinflow.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_flow.reinflow.reinflow import ReinFlow

__all__ = ["CnnPolicy", "MlpPolicy", "MultiInputPolicy", "ReinFlow"]
