from sb3_flow.fbrac.fbrac import FBRAC
from sb3_flow.fbrac.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["FBRAC", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
