"""Variance residual policies (PPO and SAC): they start exactly at the base (mean zero, the same std everywhere), learn
a state-dependent std in the direction the reward asks, keep the mean at zero unless told to learn it, save/load,
and reject bad settings."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO, SAC

from sb3_flow.policies.variance_residual import (
    MultiInputVarianceResidualPolicy,
    MultiInputVarianceResidualSACPolicy,
    VarianceResidualPolicy,
    VarianceResidualSACPolicy,
)
from sb3_flow.wrappers import ResidualActionWrapper
from tests.test_wrappers import pendulum_policy


class SignBandit(gym.Env):
    """
    One-step episodes; the observation is a sign s in {-1, +1} and the reward ``s * |a| + target_gain * -(a - 0.5)^2``:
    with ``target_gain = 0`` a wide action distribution pays where s = +1 and a narrow one where s = -1 (a variance
    residual must learn a state-dependent std), with ``target_gain > 0`` the best mean is 0.5.
    """

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, target_gain: float = 0.0):
        self.target_gain = target_gain
        self.sign = 1.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.sign = float(self.np_random.choice([-1.0, 1.0]))
        return np.array([self.sign], dtype=np.float32), {}

    def step(self, action):
        a = float(np.clip(action, -1, 1)[0])
        reward = self.sign * abs(a) - self.target_gain * (a - 0.5) ** 2
        return np.array([self.sign], dtype=np.float32), reward, True, False, {}


SIGNS = th.tensor([[-1.0], [1.0]])


def ppo_mean_std(model: PPO, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    with th.no_grad():
        distribution = model.policy.get_distribution(obs).distribution
        return distribution.mean, distribution.stddev


def sac_mean_log_std(model: SAC, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    with th.no_grad():
        mean, log_std, _ = model.actor.get_action_dist_params(obs)
        return mean, log_std


def test_both_start_at_the_base_action_with_the_same_std_in_every_state():
    base = pendulum_policy()
    env = ResidualActionWrapper(gym.make("Pendulum-v1"), base, residual_scale=0.5)
    obs = th.as_tensor(np.stack([env.observation_space.sample() for _ in range(16)]))
    ppo = PPO(VarianceResidualPolicy, env, policy_kwargs={"log_std_init": -0.7}, seed=0)
    mean, std = ppo_mean_std(ppo, obs)
    assert th.equal(mean, th.zeros_like(mean))
    np.testing.assert_allclose(std.numpy(), np.exp(-0.7), rtol=1e-6)
    sac = SAC(VarianceResidualSACPolicy, env, policy_kwargs={"log_std_init": -0.7}, seed=0)
    mean, log_std = sac_mean_log_std(sac, obs)
    assert th.equal(mean, th.zeros_like(mean))
    np.testing.assert_allclose(log_std.numpy(), -0.7, rtol=1e-6)
    # Through the wrapper, the deterministic action is the base's exactly.
    for model in (ppo, sac):
        residual_obs, _ = env.reset(seed=0)
        for _ in range(5):
            residual, _ = model.predict(residual_obs, deterministic=True)
            residual_obs, _, _, _, info = env.step(residual)
            np.testing.assert_array_equal(info["env_action"], info["base_action"])


def test_ppo_learns_a_state_dependent_std_and_keeps_the_mean_at_zero():
    th.set_num_threads(1)
    model = PPO(VarianceResidualPolicy, SignBandit(), n_steps=256, batch_size=64, learning_rate=3e-3, seed=0)
    _, std_before = ppo_mean_std(model, SIGNS)
    model.learn(3072)
    mean, std = ppo_mean_std(model, SIGNS)
    assert th.equal(mean, th.zeros_like(mean))  # learn_mean=False: the mean head never trains
    narrow, wide = std[0, 0].item(), std[1, 0].item()
    assert wide > 1.3 * std_before[1, 0].item()  # s = +1 pays for exploration
    assert narrow < 0.8 * std_before[0, 0].item()  # s = -1 pays for precision


def test_learn_mean_moves_the_mean_while_the_std_stays_a_head():
    th.set_num_threads(1)
    ppo = PPO(
        VarianceResidualPolicy, SignBandit(target_gain=4.0), n_steps=256, batch_size=64, learning_rate=3e-3, seed=0,
        policy_kwargs={"learn_mean": True},
    )  # fmt: skip
    ppo.learn(2048)
    mean, _ = ppo_mean_std(ppo, SIGNS)
    assert (mean > 0.15).all()  # towards the best mean 0.5 in both states
    sac = SAC(VarianceResidualSACPolicy, SignBandit(target_gain=4.0), learning_starts=64, seed=0)
    sac.learn(400)
    mean, log_std = sac_mean_log_std(sac, SIGNS)
    assert th.equal(mean, th.zeros_like(mean))  # learn_mean=False
    assert (log_std[0] - log_std[1]).abs().item() > 1e-3  # the std head trains, differently per state
    sac_mean = SAC(
        VarianceResidualSACPolicy, SignBandit(target_gain=4.0), learning_starts=64, seed=0,
        policy_kwargs={"learn_mean": True},
    )  # fmt: skip
    sac_mean.learn(400)
    mean, _ = sac_mean_log_std(sac_mean, SIGNS)
    assert (mean > 0.05).all()


def test_save_load_keeps_the_heads_and_learn_mean(tmp_path):
    env = SignBandit()
    for algo, policy in ((PPO, VarianceResidualPolicy), (SAC, VarianceResidualSACPolicy)):
        model = algo(policy, env, policy_kwargs={"learn_mean": True, "log_std_init": -0.3}, seed=0)
        with th.no_grad():  # a state-dependent std that load must restore
            head = model.policy.log_std_net if algo is PPO else model.actor.log_std
            head.weight.normal_(0.0, 0.1)
        model.save(tmp_path / "model.zip")
        loaded = algo.load(tmp_path / "model.zip")
        assert loaded.policy.learn_mean is True
        heads = ppo_mean_std if algo is PPO else sac_mean_log_std
        _, spread = heads(model, SIGNS)
        assert (spread[0] - spread[1]).abs().item() > 0.01  # the std differs per state
        np.testing.assert_allclose(heads(loaded, SIGNS)[1], spread)


def test_dict_observations():
    base = pendulum_policy()
    env = ResidualActionWrapper(gym.make("Pendulum-v1"), base, residual_scale=0.5, append_base_action=True)
    env = gym.wrappers.TransformObservation(env, lambda obs: {"state": obs}, spaces.Dict({"state": env.observation_space}))
    for algo, policy in ((PPO, MultiInputVarianceResidualPolicy), (SAC, MultiInputVarianceResidualSACPolicy)):
        model = algo(policy, env, seed=0)
        obs, _ = env.reset(seed=0)
        residual, _ = model.predict(obs, deterministic=True)
        np.testing.assert_array_equal(residual, np.zeros(1, np.float32))


def test_bad_settings():
    env = SignBandit()
    with pytest.raises(ValueError, match="use_sde"):
        PPO(VarianceResidualPolicy, env, use_sde=True)
    with pytest.raises(ValueError, match="use_sde"):
        SAC(VarianceResidualSACPolicy, env, use_sde=True)
    with pytest.raises(ValueError, match="log_std_init"):
        PPO(VarianceResidualPolicy, env, policy_kwargs={"log_std_init": float("nan")})
    with pytest.raises(ValueError, match="log_std_init"):
        SAC(VarianceResidualSACPolicy, env, policy_kwargs={"log_std_init": 5.0})
    discrete = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match="Box action space"):
        PPO(VarianceResidualPolicy, discrete)
