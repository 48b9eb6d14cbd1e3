import numpy as np
import pytest
import torch as th

from sb3_flow.common.demonstrations import collect_demonstrations
from sb3_flow.common.experts import pendulum_swing_up

# Small MLPs on 2 cores: one thread is fastest and immune to the other core being busy.
th.set_num_threads(1)


@pytest.fixture(scope="session")
def pendulum_demos():
    """20 episodes of the scripted Pendulum controller with action noise 0.3 (good, not optimal)."""
    return collect_demonstrations("Pendulum-v1", pendulum_swing_up, n_episodes=20, action_noise=0.3, seed=0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
