"""ReinFlow with group-relative advantages (GRPO, ``advantage="group"``): the advantages, the shared initial states,
the masking of steps after an episode, learning without a critic, save/load and bad input."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_flow import ReinFlow
from tests.test_reinflow import SMALL, collect_one_rollout

TARGET = 0.8


class ReachEnv(gym.Env):
    """
    Reward ``-(a - TARGET)^2`` per step; an episode lasts ``length`` steps (drawn in [2, max_length] at reset unless
    fixed) and ends by truncation, as a time limit does. Observation: (initial value drawn at reset, t / max_length).
    """

    def __init__(self, max_length: int = 7, length: int | None = None):
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.max_length, self.fixed_length = max_length, length

    def _obs(self) -> np.ndarray:
        return np.array([self.start, self.t / self.max_length], dtype=np.float32)

    def _draw_start(self) -> float:
        return float(self.np_random.uniform(-1.0, 1.0))

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.start = self._draw_start()
        self.length = self.fixed_length or int(self.np_random.integers(2, self.max_length + 1))
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        reward = -float((np.clip(action[0], -1.0, 1.0) - TARGET) ** 2)
        return self._obs(), reward, False, self.t >= self.length, {}


class UnseededReachEnv(ReachEnv):
    """Its reset ignores the seed: the envs of a group cannot be reset to one state."""

    def _draw_start(self) -> float:
        return float(np.random.default_rng().uniform(-1.0, 1.0))


def grpo(env, group_size: int, n_steps: int, **kwargs) -> ReinFlow:
    options = {"batch_size": 16, "n_epochs": 1, "seed": 0, "policy_kwargs": SMALL, **kwargs}
    return ReinFlow("MlpPolicy", env, advantage="group", group_size=group_size, n_steps=n_steps, **options)


def reach_envs(n_envs: int, env_class: type = ReachEnv, **env_kwargs) -> object:
    return make_vec_env(lambda: env_class(**env_kwargs), n_envs=n_envs, seed=0)


def test_advantages_are_the_episode_returns_normalized_within_each_group():
    group_size, n_steps = 4, 7
    model = grpo(reach_envs(12), group_size, n_steps)
    # A large value bias: a bootstrapped V(terminal observation) in a truncated step's reward would show.
    with th.no_grad():
        model.policy.value_net[-1].bias.fill_(1000.0)
    collect_one_rollout(model)
    buffer = model.rollout_buffer
    observations = buffer.observations  # (n_steps, n_envs, 2), not flattened yet
    # A row is in its env's first episode while the observed time counter equals the step: the counter restarts at 0
    # when SB3 resets a finished env.
    first_episode = observations[:, :, 1] == (np.arange(n_steps, dtype=np.float32) / 7)[:, None]
    lengths = first_episode.sum(axis=0)
    assert lengths.min() < n_steps and lengths.max() == n_steps  # masked steps, and an episode ending at the last step
    np.testing.assert_array_equal(buffer.loss_mask, first_episode)
    # Returns recomputed from the stored actions (the env's reward on the clipped action), undiscounted.
    rewards = -((np.clip(buffer.actions[:, :, 0], -1.0, 1.0) - TARGET) ** 2)
    returns = (rewards * first_episode).sum(axis=0).reshape(-1, group_size)
    expected = (returns - returns.mean(axis=1, keepdims=True)) / returns.std(axis=1, keepdims=True)
    advantages = buffer.advantages
    for env_index in range(12):
        episode_advantages = advantages[first_episode[:, env_index], env_index]
        # Every step of an episode gets the episode's advantage; the masked steps get 0.
        np.testing.assert_allclose(episode_advantages, expected.reshape(-1)[env_index], rtol=1e-4, atol=1e-5)
        assert np.all(advantages[~first_episode[:, env_index], env_index] == 0)
    per_episode = np.array([advantages[0, env_index] for env_index in range(12)]).reshape(-1, group_size)
    np.testing.assert_allclose(per_episode.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(per_episode.std(axis=1), 1.0, atol=1e-5)
    logged = model.logger.name_to_value
    assert logged["rollout/group_return_mean"] == pytest.approx(returns.mean(), rel=1e-5)
    assert logged["rollout/group_return_std"] == pytest.approx(returns.std(axis=1).mean(), rel=1e-5)


def test_steps_after_an_episode_get_no_weight():
    model = grpo(reach_envs(8), 4, 7)
    collect_one_rollout(model)
    buffer = model.rollout_buffer
    kept = buffer.observations[buffer.loss_mask]
    assert 0 < len(kept) < buffer.buffer_size * buffer.n_envs
    model.prepare_update()
    # The update's minibatches hold exactly the steps of the first episodes, each once.
    yielded = np.concatenate([samples.observations.numpy() for samples in buffer.get(model.batch_size)])
    assert len(yielded) == len(kept)
    np.testing.assert_array_equal(np.unique(yielded, axis=0), np.unique(kept, axis=0))


def test_groups_share_the_initial_state_and_differ_across_groups():
    env = make_vec_env("Pendulum-v1", n_envs=6, seed=0)
    model = grpo(env, 2, 200, batch_size=200)
    starts = []
    for _ in range(2):
        collect_one_rollout(model)
        starts.append(model.rollout_buffer.observations[0].reshape(3, 2, 3))  # (groups, group_size, obs_dim)
    for first in starts:
        assert np.array_equal(first[:, 0], first[:, 1])  # one initial state per group
        assert len(np.unique(first[:, 0], axis=0)) == 3  # a different one for each group
    assert not np.allclose(starts[0][:, 0], starts[1][:, 0])  # and new ones for the next rollout
    # The group seeds come from seed=: the same run starts from the same states.
    again = grpo(make_vec_env("Pendulum-v1", n_envs=6, seed=0), 2, 200, batch_size=200)
    collect_one_rollout(again)
    np.testing.assert_array_equal(again.rollout_buffer.observations[0].reshape(3, 2, 3), starts[0])


def test_learns_without_a_critic_and_keeps_the_option_through_save_and_load(tmp_path):
    model = grpo(
        reach_envs(16, length=4, max_length=4), 4, 4, batch_size=64, n_epochs=10, learning_rate=1e-3, clip_range=0.2,
        noise="fixed", max_std=0.3, ent_coef=0.0,
    )  # fmt: skip
    assert model.normalize_advantage is False
    observations = np.tile(np.random.default_rng(0).uniform(-1, 1, (64, 2)).astype(np.float32) * [1, 0], (8, 1))

    def mean_action_and_reward() -> tuple[float, float]:
        actions = np.clip(model.predict(observations, deterministic=False)[0], -1.0, 1.0)
        return float(actions.mean()), float(-((actions - TARGET) ** 2).mean())

    value_net = [parameter.detach().clone() for parameter in model.policy.value_net.parameters()]
    action_before, reward_before = mean_action_and_reward()
    model.learn(640)
    action_after, reward_after = mean_action_and_reward()
    # The policy's actions move to the better action, from far away.
    assert abs(action_before - TARGET) > 0.5 and abs(action_after - TARGET) < 0.25, (action_before, action_after)
    assert reward_before < -0.5 and reward_after > -0.15, (reward_before, reward_after)
    # No critic: the value head is untouched and the value loss is 0.
    assert all(th.equal(a, b) for a, b in zip(value_net, model.policy.value_net.parameters(), strict=True))
    assert model.logger.name_to_value["train/value_loss"] == 0.0

    model.save(tmp_path / "grpo")
    loaded = ReinFlow.load(tmp_path / "grpo", env=reach_envs(16, length=4, max_length=4))
    assert (loaded.advantage, loaded.group_size, loaded.normalize_advantage) == ("group", 4, False)
    loaded.learn(64)
    assert loaded.rollout_buffer.loss_mask is not None


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"group_size .* must be an integer >= 2, got 1"):
        ReinFlow("MlpPolicy", "Pendulum-v1", advantage="group", group_size=1)
    with pytest.raises(ValueError, match="advantage must be one of"):
        ReinFlow("MlpPolicy", "Pendulum-v1", advantage="monte_carlo")
    with pytest.raises(ValueError, match=r"n_envs to be a multiple of group_size.*n_envs=6 and group_size=4"):
        grpo(reach_envs(6), 4, 7)
    with pytest.raises(ValueError, match="critic_warmup_rollouts must be 0, got 3"):
        grpo(reach_envs(4), 2, 7, critic_warmup_rollouts=3)
    with pytest.raises(ValueError, match="critic_learning_rate must be None"):
        grpo(reach_envs(4), 2, 7, critic_learning_rate=1e-3)
    # An episode longer than a rollout: the return is not known.
    model = grpo(make_vec_env("Pendulum-v1", n_envs=2, seed=0), 2, 50)
    with pytest.raises(ValueError, match=r"end within one rollout of n_steps=50 .* env 0 \(Pendulum-v1\)"):
        model.learn(100)
    # An env that does not reset to its seed's state cannot form a group.
    model = grpo(reach_envs(4, UnseededReachEnv), 2, 7)
    with pytest.raises(ValueError, match=r"envs of a group to start from the same state, but env 1 .*than env 0"):
        model.learn(28)
