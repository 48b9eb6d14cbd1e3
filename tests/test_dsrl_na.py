"""DSRLNA: decoding through the base policy, one noise bound everywhere, learning, save/load, bad input."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from sb3_flow import FlowPolicy
from sb3_flow.dsrl import DSRLNA


class TargetBandit(gym.Env):
    """One-step episodes with a constant observation; reward -|a - 0.8| on a 1-d action in [-1, 1]."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(2, dtype=np.float32), -float(abs(action[0] - 0.8)), True, False, {}


class ConstantVelocityPolicy(FlowPolicy):
    """v = 0.1 everywhere, so the action is clip(x0 + 0.1): the decoding can be checked exactly; records its noises."""

    noises: list

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        last = self.velocity_net.trunk[-1]
        with th.no_grad():
            last.weight.zero_()
            last.bias.fill_(0.1)
        self.noises = []

    def sample(self, obs, noise=None, *args, **kwargs):
        if noise is not None:
            self.noises.append(noise.detach().clone())
        return super().sample(obs, noise, *args, **kwargs)


def constant_base() -> ConstantVelocityPolicy:
    env = TargetBandit()
    return ConstantVelocityPolicy(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[8], n_flow_steps=4)


def test_predict_decodes_the_actor_noise_through_the_base_policy():
    base = constant_base()
    model = DSRLNA("MlpPolicy", TargetBandit(), base_policy=base, noise_bound=1.5, seed=0)
    obs = np.zeros((5, 2), dtype=np.float32)
    actions, _ = model.predict(obs, deterministic=True)
    with th.no_grad():
        unit_noise = model.actor(th.as_tensor(obs), deterministic=True).numpy()
    np.testing.assert_allclose(actions, np.clip(1.5 * unit_noise + 0.1, -1, 1), atol=1e-5)
    single, _ = model.predict(obs[0], deterministic=True)
    assert single.shape == (1,)


def test_one_noise_bound_everywhere_and_warmup_from_the_base_policy():
    base = constant_base()
    model = DSRLNA("MlpPolicy", TargetBandit(), base_policy=base, noise_bound=0.5, learning_starts=100, batch_size=32, seed=0)
    model.learn(150)
    noises = th.cat(base.noises)
    # Warm-up, rollouts, TD next actions and the noise critic's draws all stay within the bound.
    assert noises.abs().max() <= 0.5 + 1e-6 and noises.abs().max() > 0.3
    # The buffer holds the real (normalized) actions the base policy produced: clip(w + 0.1) with |w| <= 0.5.
    stored = model.replay_buffer.actions[: model.replay_buffer.pos].reshape(-1)
    assert stored.min() >= -0.4 - 1e-5 and stored.max() <= 0.6 + 1e-5
    assert "train/noise_critic_loss" in model.logger.name_to_value


def test_learns_to_steer_the_base_policy_to_the_rewarded_action():
    base = constant_base()
    model = DSRLNA(
        "MlpPolicy", TargetBandit(), base_policy=base, noise_bound=1.5, learning_starts=100, learning_rate=3e-3, seed=0,
        ent_coef=0.01, noise_critic_samples=4, policy_kwargs={"net_arch": [32, 32]},
    )  # fmt: skip
    before, _ = model.predict(np.zeros(2, dtype=np.float32), deterministic=True)
    model.learn(1000)
    after, _ = model.predict(np.zeros(2, dtype=np.float32), deterministic=True)
    assert abs(after[0] - 0.8) < 0.1 and abs(after[0] - 0.8) < abs(before[0] - 0.8), (before, after)


def test_save_load_needs_and_reattaches_the_base(tmp_path):
    base = constant_base()
    model = DSRLNA("MlpPolicy", TargetBandit(), base_policy=base, learning_starts=20, batch_size=16, seed=0)
    model.learn(40)
    model.save(tmp_path / "dsrl_na")
    with pytest.raises(ValueError, match="needs its base policy"):
        DSRLNA.load(tmp_path / "dsrl_na", env=TargetBandit())
    base.save(str(tmp_path / "base.pt"))
    loaded = DSRLNA.load(tmp_path / "dsrl_na", env=TargetBandit(), base_policy=tmp_path / "base.pt")
    obs = np.zeros((3, 2), dtype=np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    for a, b in zip(model.noise_critic.parameters(), loaded.noise_critic.parameters(), strict=True):
        assert th.equal(a, b)


def test_bad_input_errors():
    base = constant_base()
    for bad in (0.0, float("inf")):
        with pytest.raises(ValueError, match="noise_bound"):
            DSRLNA("MlpPolicy", TargetBandit(), base_policy=base, noise_bound=bad)
    with pytest.raises(ValueError, match="observation space"):
        DSRLNA("MlpPolicy", "Pendulum-v1", base_policy=base)
    with pytest.raises(ValueError, match="needs its base policy"):
        DSRLNA("MlpPolicy", TargetBandit())
