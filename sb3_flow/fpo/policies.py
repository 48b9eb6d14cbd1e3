from sb3_flow.policies.actor_critic import (
    CnnFlowActorCriticPolicy,
    FlowActorCriticPolicy,
    MultiInputFlowActorCriticPolicy,
)

MlpPolicy = FlowActorCriticPolicy
CnnPolicy = CnnFlowActorCriticPolicy
MultiInputPolicy = MultiInputFlowActorCriticPolicy

__all__ = ["CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
