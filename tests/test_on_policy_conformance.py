"""What an SB3 user expects of every on-policy flow algorithm (FlowPPO, ReinFlow): one set of tests for both."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv, VecNormalize

from sb3_flow import FlowPPO, ReinFlow
from tests.helpers import DictObsEnv

SMALL = {"net_arch": [32, 32], "value_net_arch": [32]}
ALGORITHMS = [FlowPPO, ReinFlow]


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_save_load_identical_actions_and_parameters(algo, tmp_path):
    kwargs = {"n_steps": 32, "batch_size": 16, "n_epochs": 1, "clip_range": 0.03}
    model = algo("MlpPolicy", "Pendulum-v1", seed=0, policy_kwargs=SMALL, **kwargs)
    model.learn(32)
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model", env=make_vec_env("Pendulum-v1", n_envs=1))
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    state, loaded_state = model.policy.state_dict(), loaded.policy.state_dict()
    assert state.keys() == loaded_state.keys()
    for name in state:
        assert th.equal(state[name], loaded_state[name]), name
    assert type(loaded.policy) is type(model.policy) and loaded.clip_range(1.0) == 0.03
    loaded.learn(32, reset_num_timesteps=False)
    assert loaded.num_timesteps == 64


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_same_seed_same_run(algo):
    def run():
        model = algo("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=16, n_epochs=2, seed=7, policy_kwargs=SMALL)
        return model.learn(64)

    a, b = run(), run()
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
        assert th.equal(pa, pb)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_multiple_envs_vecnormalize_callbacks_tensorboard_progress_bar(algo, tmp_path):
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=4, seed=0))
    model = algo(
        "MlpPolicy", env, n_steps=16, batch_size=32, n_epochs=1, seed=0, policy_kwargs=SMALL, tensorboard_log=str(tmp_path)
    )

    class Count(BaseCallback):
        calls = 0

        def _on_step(self) -> bool:
            Count.calls += 1
            return True

    model.learn(128, callback=Count(), progress_bar=True)
    assert model.num_timesteps == 128 and Count.calls == 32  # once per vectorized step
    assert env.obs_rms.count > 100  # VecNormalize saw the rollouts
    assert list(tmp_path.glob(f"{algo.__name__}_1/events.out.tfevents.*"))
    for key in ("train/ratio", "train/clip_fraction", "train/approx_kl", "train/explained_variance", "train/value_loss"):
        assert key in model.logger.name_to_value, key


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_subproc_vec_env(algo):
    env = make_vec_env("Pendulum-v1", n_envs=2, vec_env_cls=SubprocVecEnv, seed=0)
    try:
        model = algo("MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0, policy_kwargs=SMALL)
        model.learn(32)
        assert model.num_timesteps == 32
    finally:
        env.close()


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_dict_observations(algo):
    model = algo("MultiInputPolicy", DictObsEnv(), n_steps=32, batch_size=16, n_epochs=1, seed=0, policy_kwargs=SMALL)
    model.learn(32)
    obs, _ = DictObsEnv().reset(seed=0)
    assert model.predict(obs)[0].shape == (2,)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_predict_single_and_batched(algo):
    model = algo("MlpPolicy", "Pendulum-v1", seed=0, policy_kwargs=SMALL)
    single, _ = model.predict(np.zeros(3, dtype=np.float32), deterministic=True)
    batch, _ = model.predict(np.zeros((4, 3), dtype=np.float32), deterministic=True)
    assert single.shape == (1,) and batch.shape == (4, 1)
    np.testing.assert_allclose(batch, np.repeat(single[None], 4, axis=0), atol=1e-6)
    np.testing.assert_array_equal(single, model.predict(np.zeros(3, dtype=np.float32), deterministic=True)[0])
    stochastic = np.stack([model.predict(np.zeros(3, dtype=np.float32))[0] for _ in range(10)])
    assert stochastic.std() > 0


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_non_finite_loss_stops_training_before_the_weights_change(algo):
    class NaNReward(gym.Wrapper):
        def step(self, action):
            obs, _, terminated, truncated, info = self.env.step(action)
            return obs, float("nan"), terminated, truncated, info

    model = algo("MlpPolicy", NaNReward(gym.make("Pendulum-v1")), n_steps=32, batch_size=16, seed=0, policy_kwargs=SMALL)
    before = [p.detach().clone() for p in model.policy.parameters()]
    with pytest.raises(FloatingPointError, match=f"{algo.__name__}: the loss"):
        model.learn(32)
    assert all(th.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True))


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_target_kl_stops_the_update_early(algo):
    kwargs = {"n_steps": 64, "batch_size": 16, "n_epochs": 10, "learning_rate": 1e-2, "seed": 0, "policy_kwargs": SMALL}
    free = algo("MlpPolicy", "Pendulum-v1", **kwargs).learn(64)
    stopped = algo("MlpPolicy", "Pendulum-v1", target_kl=1e-9, **kwargs).learn(64)
    # Without a limit every epoch runs; with a tiny one the first minibatch that moves the policy ends the update.
    assert free._n_updates == 10 and stopped._n_updates == 1
