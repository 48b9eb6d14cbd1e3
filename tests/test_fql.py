"""FQL, FBRAC and the off-policy core: dataset in the buffer, TD targets, offline then online, save/load, learning."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback, ProgressBarCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_flow import Demonstrations
from sb3_flow.cfgrl import CFGRL
from sb3_flow.fbrac import FBRAC
from sb3_flow.fql import FQL
from sb3_flow.ifql import IFQL
from tests.helpers import BimodalEnv, bimodal_demonstrations

TINY = {"net_arch": [16], "critic_net_arch": [16]}
BEST_ACTION = 0.6


class BanditEnv(gym.Env):
    """One-step episodes; reward 1 - (a - 0.6)^2, so the best action is 0.6."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        reward = 1.0 - (float(np.asarray(action).reshape(-1)[0]) - BEST_ACTION) ** 2
        return np.zeros(1, np.float32), reward, True, False, {}


def bandit_dataset(n: int = 1000, seed: int = 0) -> Demonstrations:
    """85% of the actions in [-0.8, -0.4] (worse), 15% near the best action 0.6."""
    rng = np.random.default_rng(seed)
    good = rng.random(n) < 0.15
    actions = np.where(good, rng.normal(BEST_ACTION, 0.05, n), rng.uniform(-0.8, -0.4, n)).clip(-1, 1)
    actions = actions.astype(np.float32)[:, None]
    observations = np.zeros((n, 1), np.float32)
    rewards = 1.0 - (actions[:, 0] - BEST_ACTION) ** 2
    ones = np.ones(n, bool)
    return Demonstrations(observations, actions, rewards, observations, ones, ~ones, ones)


def test_the_replay_buffer_holds_the_dataset_exactly_then_appends_online_data():
    demos = bimodal_demonstrations(300)
    model = FQL("MlpPolicy", BimodalEnv(), dataset=demos, batch_size=8, policy_kwargs=TINY, seed=0)
    buffer = model.replay_buffer
    assert buffer.n_offline == 300 and buffer.n_online == 0
    for row in (0, -1):
        np.testing.assert_array_equal(buffer.offline.observations[row], demos.observations[row])
        np.testing.assert_array_equal(buffer.offline.next_observations[row], demos.next_observations[row])
        np.testing.assert_allclose(buffer.offline.actions[row], demos.actions[row])  # [-1, 1] box: unscaled equals scaled
        assert buffer.offline.rewards[row, 0] == demos.rewards[row]
        assert buffer.offline.terminations[row, 0] == demos.terminations[row]
    model.learn(12)
    assert buffer.n_offline == 300 and buffer.n_online == 12 and buffer.size() == 312
    np.testing.assert_array_equal(buffer.offline.observations[0], demos.observations[0])


def test_the_dataset_actions_are_normalized_to_the_policy_box(pendulum_demos):
    model = FQL("MlpPolicy", "Pendulum-v1", dataset=pendulum_demos, policy_kwargs=TINY, seed=0)
    np.testing.assert_allclose(model.replay_buffer.offline.actions[:, 0], pendulum_demos.actions[:, 0] / 2.0, atol=1e-6)


def test_td_targets_bootstrap_through_truncations_but_not_terminations():
    observations = np.array([[0.1, 0.2], [0.3, 0.4]], np.float32)
    demos = Demonstrations(
        observations=observations,
        actions=np.array([[0.5], [-0.5]], np.float32),
        rewards=np.array([1.0, 2.0], np.float32),
        next_observations=observations[::-1].copy(),
        terminations=np.array([True, False]),
        truncations=np.array([False, True]),
        episode_starts=np.array([True, True]),
    )
    model = FQL("MlpPolicy", BimodalEnv(), dataset=demos, gamma=0.9, policy_kwargs=TINY, seed=0)
    data = model.replay_buffer.sample(64)
    terminated = data.observations[:, 0] < 0.2
    assert th.equal(data.dones.flatten(), terminated.float())  # the truncated row is not done
    next_actions = th.full((64, 1), 0.3)
    next_q = model.policy.q_values(data.next_observations, next_actions, target=True).mean(dim=0)
    expected = th.where(terminated, th.tensor(1.0), 2.0 + 0.9 * next_q)
    th.testing.assert_close(model.td_targets(data, next_actions), expected)


def test_online_truncations_are_stored_as_not_done():
    model = FQL("MlpPolicy", BimodalEnv(episode_length=3), policy_kwargs=TINY, batch_size=8, learning_starts=100, seed=0)
    model.learn(9)  # three truncated episodes, no termination
    data = model.replay_buffer.sample(64)
    assert model.replay_buffer.n_online == 9
    assert data.dones.sum() == 0


def test_offline_then_online_survives_save_and_load(tmp_path):
    model = FQL("MlpPolicy", BimodalEnv(), dataset=bimodal_demonstrations(200), batch_size=16, policy_kwargs=TINY, seed=0)
    model.learn_offline(20)
    assert (model.num_timesteps, model.n_offline_steps, model._n_updates) == (0, 20, 20)
    model.learn(16)
    assert (model.num_timesteps, model.n_offline_steps, model._n_updates) == (16, 20, 36)
    model.save(tmp_path / "fql")
    model.save_replay_buffer(tmp_path / "buffer")

    loaded = FQL.load(tmp_path / "fql", env=BimodalEnv())
    loaded.load_replay_buffer(tmp_path / "buffer")
    assert (loaded.num_timesteps, loaded.n_offline_steps, loaded._n_updates) == (16, 20, 36)
    assert (loaded.replay_buffer.n_offline, loaded.replay_buffer.n_online) == (200, 16)
    np.testing.assert_array_equal(loaded.replay_buffer.offline.actions, model.replay_buffer.offline.actions)
    for name in ("actor_optimizer", "critic_optimizer"):
        saved, restored = (getattr(m.policy, name).state_dict()["state"] for m in (model, loaded))
        assert saved.keys() == restored.keys() and len(saved) > 0
        for key in saved:
            assert th.equal(saved[key]["exp_avg"], restored[key]["exp_avg"])
    obs = np.random.default_rng(0).uniform(-1, 1, (5, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    loaded.learn(8, reset_num_timesteps=False)
    assert loaded.num_timesteps == 24 and loaded.replay_buffer.n_online == 24


def test_deterministic_predict_is_one_forward_pass_from_zero_noise():
    model = FQL("MlpPolicy", BimodalEnv(), policy_kwargs=TINY, seed=0)
    calls = {"actor": 0, "flow": 0}
    model.policy.actor.register_forward_hook(lambda *_: calls.__setitem__("actor", calls["actor"] + 1))
    model.policy.bc_policy.velocity_net.register_forward_hook(lambda *_: calls.__setitem__("flow", calls["flow"] + 1))
    obs = np.random.default_rng(0).uniform(-1, 1, (4, 2)).astype(np.float32)
    actions, _ = model.predict(obs, deterministic=True)
    assert calls == {"actor": 1, "flow": 0}
    with th.no_grad():
        expected = model.policy.one_step_actions(th.as_tensor(obs), th.zeros(4, 1)).clamp(-1, 1).numpy()
    np.testing.assert_allclose(actions, expected, atol=1e-6)
    stochastic = model.predict(np.repeat(obs[:1], 64, axis=0), deterministic=False)[0]
    assert np.std(stochastic) > 0  # z ~ N(0, I) otherwise


def test_fql_finds_the_best_action_that_the_dataset_mostly_misses():
    model = FQL("MlpPolicy", BanditEnv(), dataset=bandit_dataset(), alpha=0.1, batch_size=64, learning_rate=3e-3,
                n_flow_steps=4, policy_kwargs={"net_arch": [32, 32], "critic_net_arch": [32, 32]}, seed=0)  # fmt: skip
    model.learn_offline(400)
    obs = np.zeros((500, 1), np.float32)
    fql_actions = model.predict(obs)[0]
    bc_actions = model.bc_policy.predict(obs)[0]
    assert abs(model.predict(obs[:1], deterministic=True)[0][0, 0] - BEST_ACTION) < 0.15
    assert np.mean(np.abs(fql_actions - BEST_ACTION) < 0.15) > 0.7
    # The BC flow imitates the data: most of its actions are in the worse mode.
    assert np.mean(bc_actions < 0) > 0.6


def test_learn_offline_counts_gradient_steps_for_callbacks(tmp_path):
    model = FQL("MlpPolicy", BimodalEnv(), dataset=bimodal_demonstrations(100), batch_size=8, policy_kwargs=TINY, seed=0)
    evaluation = EvalCallback(BimodalEnv(), eval_freq=5, n_eval_episodes=1, log_path=str(tmp_path), verbose=0)
    model.learn_offline(10, callback=evaluation, progress_bar=True)
    assert list(evaluation.evaluations_timesteps) == [5, 10]
    assert model.num_timesteps == 0 and model.n_offline_steps == 10


def test_fbrac_backpropagates_through_every_flow_step():
    model = FBRAC("MlpPolicy", BimodalEnv(), dataset=bimodal_demonstrations(100), batch_size=8, n_flow_steps=3,
                  policy_kwargs=TINY, seed=0)  # fmt: skip
    calls = []
    model.policy.bc_policy.velocity_net.trunk.register_full_backward_hook(lambda *_: calls.append(1))
    model.learn_offline(1)
    assert len(calls) == 1 + 3  # the CFM loss, then each of the K steps of the integration
    obs = np.zeros((3, 2), np.float32)
    with th.no_grad():
        expected = model.policy.bc_policy.sample(th.as_tensor(obs), deterministic=True).numpy()
    np.testing.assert_allclose(model.predict(obs, deterministic=True)[0], expected, atol=1e-6)


def test_bad_datasets_and_options_get_clear_errors(pendulum_demos):
    with pytest.raises(ValueError, match=r"expects \(2,\)"):
        FQL("MlpPolicy", BimodalEnv(), dataset=pendulum_demos, policy_kwargs=TINY)
    demos = bimodal_demonstrations(50)
    demos.rewards[3] = np.nan
    with pytest.raises(ValueError, match=r"Demonstration rewards hold NaN or inf in 1 of 50 rows \(first at row 3\)"):
        FQL("MlpPolicy", BimodalEnv(), dataset=demos, policy_kwargs=TINY)
    empty = bimodal_demonstrations(50)
    empty = Demonstrations(*(getattr(empty, name)[:0] for name in Demonstrations.__dataclass_fields__))
    with pytest.raises(ValueError, match="The dataset is empty"):
        FQL("MlpPolicy", BimodalEnv(), dataset=empty, policy_kwargs=TINY)
    no_rewards = {name: getattr(demos, name) for name in Demonstrations.__dataclass_fields__}
    no_rewards["rewards"] = None
    with pytest.raises(ValueError, match="rewards"):
        Demonstrations(**no_rewards)
    with pytest.raises(ValueError, match="learn_offline needs data"):
        FQL("MlpPolicy", BimodalEnv(), policy_kwargs=TINY).learn_offline(5)
    with pytest.raises(ValueError, match="q_agg"):
        FQL("MlpPolicy", BimodalEnv(), q_agg="max")
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        FQL("MlpPolicy", BimodalEnv(), alpha=float("nan"))
    with pytest.raises(ValueError, match="n_gradient_steps must be a positive integer"):
        FQL("MlpPolicy", BimodalEnv(), dataset=bimodal_demonstrations(20), policy_kwargs=TINY).learn_offline(0)
    with pytest.raises(TypeError, match="Box action space"):
        FQL("MlpPolicy", "CartPole-v1")


def test_the_policy_loss_reaches_the_actions_but_not_the_critic_weights():
    model = FQL("MlpPolicy", BimodalEnv(), dataset=bimodal_demonstrations(100), batch_size=8, policy_kwargs=TINY, seed=0)
    data = model.replay_buffer.sample(8)
    model.policy.critic_optimizer.zero_grad(set_to_none=True)
    loss, _ = model.actor_loss(data)
    loss.backward()
    assert all(parameter.grad is None for parameter in model.policy.critic.parameters())
    assert all(parameter.requires_grad for parameter in model.policy.critic.parameters())
    assert all(parameter.grad is not None for parameter in model.policy.actor.parameters())


def test_a_saved_model_loads_without_an_environment(tmp_path):
    model = FQL("MlpPolicy", BimodalEnv(), policy_kwargs=TINY, seed=0)
    model.save(tmp_path / "fql")
    loaded = FQL.load(tmp_path / "fql")
    obs = np.zeros((2, 2), np.float32)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    with pytest.raises(ValueError, match="needs an environment"):
        FQL("MlpPolicy", None)


class SquareActionEnv(gym.Env):
    """A (2, 2) Box action space: datasets and predictions keep the matrix shape."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Box(-2.0, 2.0, (2, 2), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, True, {}


def test_a_matrix_shaped_action_space_takes_a_dataset_and_predicts():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-2, 2, (20, 2, 2)).astype(np.float32)
    observations = rng.uniform(-1, 1, (20, 2)).astype(np.float32)
    ends = np.zeros(20, bool)
    demos = Demonstrations(observations, actions, np.zeros(20), observations, ends, ~ends, np.ones(20, bool))
    model = FQL("MlpPolicy", SquareActionEnv(), dataset=demos, batch_size=4, policy_kwargs=TINY, seed=0)
    np.testing.assert_allclose(model.replay_buffer.offline.actions, actions.reshape(20, 4) / 2.0, atol=1e-6)
    model.learn_offline(2)
    assert model.predict(observations[:3])[0].shape == (3, 2, 2)


def test_load_takes_the_constructor_arguments_and_a_dataset(tmp_path):
    policy_kwargs = dict(TINY)
    model = FQL("MlpPolicy", BimodalEnv(), n_flow_steps=3, policy_kwargs=policy_kwargs, seed=0)
    assert policy_kwargs == TINY and model.policy.bc_policy.n_flow_steps == 3
    model.save(tmp_path / "fql")
    loaded = FQL.load(tmp_path / "fql", env=BimodalEnv(), policy_kwargs=TINY, dataset=bimodal_demonstrations(30))
    assert loaded.policy.bc_policy.n_flow_steps == 3 and loaded.replay_buffer.n_offline == 30
    loaded.learn_offline(2)  # a loaded model with data trains offline


def test_learn_offline_leaves_the_environment_and_the_step_count_alone(tmp_path):
    model = FQL("MlpPolicy", BimodalEnv(), dataset=bimodal_demonstrations(50), batch_size=8, policy_kwargs=TINY, seed=0)
    model.learn(5)
    last_obs = model._last_obs.copy()
    checkpoints = CheckpointCallback(save_freq=2, save_path=str(tmp_path), name_prefix="offline")
    model.learn_offline(4, callback=[checkpoints, ProgressBarCallback()])
    np.testing.assert_array_equal(model._last_obs, last_obs)  # the online episode goes on where it was
    assert model.num_timesteps == 5 and model.n_offline_steps == 4
    assert FQL.load(tmp_path / "offline_4_steps").num_timesteps == 5  # a checkpoint records environment steps
    model.learn_offline(2, callback=CheckpointCallback(save_freq=2, save_path=str(tmp_path), name_prefix="offline"))
    assert (tmp_path / "offline_6_steps.zip").is_file()  # the offline count goes on over calls
    env_less = FQL.load(tmp_path / "offline_4_steps", dataset=bimodal_demonstrations(30))
    env_less.learn_offline(2)
    assert env_less.n_offline_steps == 6


def test_foreign_replay_buffers_and_vec_normalize_are_refused(tmp_path):
    sac = SAC("MlpPolicy", BimodalEnv())
    sac.save_replay_buffer(tmp_path / "sac_buffer")
    model = FQL("MlpPolicy", BimodalEnv(), dataset=bimodal_demonstrations(30), policy_kwargs=TINY, seed=0)
    with pytest.raises(TypeError, match="without an offline block"):
        model.load_replay_buffer(tmp_path / "sac_buffer")
    assert model.replay_buffer.n_offline == 30
    normalized = VecNormalize(DummyVecEnv([BimodalEnv]))
    with pytest.raises(ValueError, match="VecNormalize are not supported together"):
        FQL("MlpPolicy", normalized, dataset=bimodal_demonstrations(30), policy_kwargs=TINY)


@pytest.mark.parametrize("algo", [FQL, IFQL, CFGRL])
def test_several_envs_seeds_and_tensorboard_behave_as_in_sac(algo, tmp_path):
    venv = make_vec_env(BimodalEnv, n_envs=2, seed=0)
    model = algo("MlpPolicy", venv, dataset=bimodal_demonstrations(40), batch_size=8, policy_kwargs=TINY, seed=0,
                tensorboard_log=str(tmp_path))  # fmt: skip
    model.learn_offline(3)
    model.learn(8)
    assert model.num_timesteps == 8 and model.replay_buffer.n_online == 8 and model.replay_buffer.n_offline == 40
    name = algo.__name__
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"{name}_1", f"{name}_offline_1"]

    def trained(seed: int) -> np.ndarray:
        twin = algo("MlpPolicy", BimodalEnv(), dataset=bimodal_demonstrations(40), batch_size=8, policy_kwargs=TINY, seed=seed)
        twin.learn_offline(5)
        return twin.predict(np.zeros((3, 2), np.float32), deterministic=True)[0]

    np.testing.assert_array_equal(trained(1), trained(1))
    assert not np.array_equal(trained(1), trained(2))
