from sb3_flow.policies.flow_q import CnnFlowQPolicy, FlowQPolicy, MultiInputFlowQPolicy

MlpPolicy = FlowQPolicy
CnnPolicy = CnnFlowQPolicy
MultiInputPolicy = MultiInputFlowQPolicy
