"""IFQL's policy: the BC flow, the IQL critics and best-of-N selection of
:class:`~sb3_flow.policies.flow_q.InSampleFlowQPolicy`."""

from sb3_flow.policies.flow_q import CnnInSampleFlowQPolicy, InSampleFlowQPolicy, MultiInputInSampleFlowQPolicy

IFQLPolicy = InSampleFlowQPolicy
CnnIFQLPolicy = CnnInSampleFlowQPolicy
MultiInputIFQLPolicy = MultiInputInSampleFlowQPolicy

MlpPolicy = IFQLPolicy
CnnPolicy = CnnIFQLPolicy
MultiInputPolicy = MultiInputIFQLPolicy
