"""DSRLNA: decoding through the base policy, one noise bound everywhere, the reference's losses and settings,
learning, save/load with the base inside, the caller's base left alone, (2, 2) actions, NaN guards, bad input."""

import gc

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from sb3_flow import FlowBC, FlowPolicy
from sb3_flow.dsrl import DSRLNA
from tests.helpers import BimodalEnv, bimodal_demonstrations


class TargetBandit(gym.Env):
    """One-step episodes with a constant observation; reward -|a - 0.8| on a 1-d action in [-1, 1]."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(2, dtype=np.float32), -float(abs(action[0] - 0.8)), True, False, {}


def constant_base() -> FlowPolicy:
    """v = 0.1 everywhere, so the action is clip(x0 + 0.1): the decoding can be checked exactly."""
    env = TargetBandit()
    policy = FlowPolicy(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[8], n_flow_steps=4)
    with th.no_grad():
        policy.velocity_net.trunk[-1].weight.zero_()
        policy.velocity_net.trunk[-1].bias.fill_(0.1)
    return policy


def record_noises(policy: FlowPolicy) -> list[th.Tensor]:
    """Record the initial noises every later ``policy.sample`` call is given."""
    noises: list[th.Tensor] = []
    sample = policy.sample

    def recording_sample(obs, noise=None, *args, **kwargs):
        if noise is not None:
            noises.append(noise.detach().clone())
        return sample(obs, noise, *args, **kwargs)

    policy.sample = recording_sample
    return noises


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
    model = DSRLNA(
        "MlpPolicy", TargetBandit(), base_policy=constant_base(), noise_bound=0.5, learning_starts=100, batch_size=32, seed=0
    )
    noises = record_noises(model.base_policy)  # DSRLNA acts through its own copy of the base
    model.learn(150)
    noises = th.cat(noises)
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


def test_save_with_an_object_base_then_load_without_it_gives_identical_actions(tmp_path):
    th.manual_seed(0)
    base = FlowPolicy(TargetBandit().observation_space, TargetBandit().action_space, lambda _: 1e-3, net_arch=[8])
    model = DSRLNA("MlpPolicy", TargetBandit(), base_policy=base, learning_starts=20, batch_size=16, seed=0)
    model.learn(40)
    model.save(tmp_path / "dsrl_na")
    obs = np.random.default_rng(0).uniform(-1, 1, (4, 2)).astype(np.float32)
    expected = model.predict(obs, deterministic=True)[0]
    del base, model
    gc.collect()
    loaded = DSRLNA.load(tmp_path / "dsrl_na", env=TargetBandit())  # no base_policy: the saved copy
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], expected)
    assert not any(parameter.requires_grad for parameter in loaded.base_policy.parameters())
    # A base given as a file is saved inside too: the model loads after the file is gone.
    base_file = tmp_path / "base.pt"
    loaded.base_policy.save(str(base_file))
    from_file = DSRLNA("MlpPolicy", TargetBandit(), base_policy=base_file, seed=0)
    from_file.save(tmp_path / "from_file")
    base_file.unlink()
    again = DSRLNA.load(tmp_path / "from_file")
    np.testing.assert_array_equal(again.predict(obs, deterministic=True)[0], from_file.predict(obs, deterministic=True)[0])


def test_a_base_policy_passed_to_load_replaces_the_saved_one(tmp_path):
    model = DSRLNA("MlpPolicy", TargetBandit(), base_policy=constant_base(), learning_starts=20, batch_size=16, seed=0)
    model.learn(40)
    model.save(tmp_path / "dsrl_na")
    th.manual_seed(1)
    other = FlowPolicy(TargetBandit().observation_space, TargetBandit().action_space, lambda _: 1e-3, net_arch=[16, 16])
    loaded = DSRLNA.load(tmp_path / "dsrl_na", env=TargetBandit(), base_policy=other)
    for name, value in other.state_dict().items():
        assert th.equal(loaded.base_policy.state_dict()[name], value), name
    for a, b in zip(model.noise_critic.parameters(), loaded.noise_critic.parameters(), strict=True):
        assert th.equal(a, b)
    obs = np.zeros((3, 2), dtype=np.float32)
    with th.no_grad():
        noise = 1.5 * loaded.actor(th.as_tensor(obs), deterministic=True)
        expected = other.sample(th.as_tensor(obs), noise=noise).numpy()
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], expected, atol=1e-6)


def test_noise_critic_heads_regress_onto_their_own_action_critic_heads():
    model = DSRLNA("MlpPolicy", TargetBandit(), base_policy=constant_base(), seed=0)
    # Q^A's heads are the constants 1 and 5, Q^W's heads start at 0: the reference pairs head i with head i.
    with th.no_grad():
        for head, value in zip(model.critic.q_networks, (1.0, 5.0), strict=True):
            head[-1].weight.zero_()
            head[-1].bias.fill_(value)
        for head in model.noise_critic.q_networks:
            head[-1].weight.zero_()
            head[-1].bias.zero_()
    loss = model._noise_critic_loss(th.zeros(8, 2))
    assert loss.item() == pytest.approx(0.5 * (1.0**2 + 5.0**2))  # onto min Q^A it would be 0.5 * (1 + 1)


def test_target_entropy_defaults_to_the_authors_zero():
    assert DSRLNA("MlpPolicy", TargetBandit(), base_policy=constant_base()).target_entropy == 0.0
    auto = DSRLNA("MlpPolicy", SquareActionEnv(), base_policy=square_base(), target_entropy="auto")
    assert auto.target_entropy == -4.0  # SAC's -dim(A), still available


def small_flow_bc() -> FlowBC:
    return FlowBC(
        "MlpPolicy", BimodalEnv(), bimodal_demonstrations(256), batch_size=32, policy_kwargs={"net_arch": [8]}, seed=0
    ).learn(3)


def test_the_callers_base_policy_is_left_unchanged_and_keeps_training():
    bc = small_flow_bc()
    bc.policy.set_training_mode(True)
    flags = [parameter.requires_grad for parameter in bc.policy.parameters()]
    device = bc.policy.device
    model = DSRLNA("MlpPolicy", BimodalEnv(), base_policy=bc, learning_starts=10, batch_size=8, seed=0)
    model.learn(20)
    assert model.base_policy is not bc.policy and not model.base_policy.training
    assert [parameter.requires_grad for parameter in bc.policy.parameters()] == flags and all(flags)
    assert bc.policy.training and bc.policy.device == device
    before = [parameter.detach().clone() for parameter in bc.policy.parameters()]
    bc.learn(3)  # "element 0 of tensors does not require grad" when the base was frozen in place
    assert any(not th.equal(a, b) for a, b in zip(before, bc.policy.parameters(), strict=True))


class SquareActionEnv(gym.Env):
    """A (2, 2) Box action space with different bounds per entry; the reward prefers actions near the centre."""

    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Box(
        np.array([[-1.0, -2.0], [0.0, -1.0]], np.float32), np.array([[1.0, 2.0], [3.0, 1.0]], np.float32)
    )

    def __init__(self):
        self.received: list[np.ndarray] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, dtype=np.float32), {}

    def step(self, action):
        self.received.append(np.array(action))
        centre = (self.action_space.low + self.action_space.high) / 2
        reward = -float(np.abs(action - centre).sum())
        return np.full(3, 0.1, dtype=np.float32), reward, False, len(self.received) % 10 == 0, {}


def square_base() -> FlowPolicy:
    th.manual_seed(0)
    env = SquareActionEnv()
    return FlowPolicy(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[8], n_flow_steps=2)


def test_a_2x2_action_space_warms_up_learns_and_predicts():
    env = SquareActionEnv()
    model = DSRLNA("MlpPolicy", env, base_policy=square_base(), learning_starts=20, batch_size=8, seed=0)
    obs = np.zeros(3, dtype=np.float32)
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (2, 2)
    np.testing.assert_allclose(action, square_base().predict(obs, deterministic=True)[0], atol=1e-5)  # start_at_base
    model.learn(30)  # 20 warm-up steps from the base policy, then 10 from the actor
    received = np.array(env.received)
    assert received.shape == (30, 2, 2)
    assert np.all(received >= env.action_space.low - 1e-6) and np.all(received <= env.action_space.high + 1e-6)
    stored = model.replay_buffer.actions[:30, 0]  # normalized, flat
    np.testing.assert_allclose(stored, model.policy.scale_action(received).reshape(30, 4), atol=1e-5)
    assert model.predict(np.zeros((5, 3), dtype=np.float32))[0].shape == (5, 2, 2)


class NaNObservationEnv(TargetBandit):
    """TargetBandit whose observations turn NaN from the third step on."""

    def __init__(self):
        self.steps = 0

    def step(self, action):
        self.steps += 1
        obs = np.full(2, np.nan if self.steps >= 3 else 0.0, dtype=np.float32)
        return obs, 0.0, False, False, {}


def test_nan_observations_give_a_clear_error_in_predict_and_rollouts():
    model = DSRLNA("MlpPolicy", TargetBandit(), base_policy=constant_base(), seed=0)
    for bad in (np.array([np.nan, 0.0], np.float32), np.array([[0.0, 0.0], [0.0, np.inf]], np.float32)):
        with pytest.raises(ValueError, match="non-finite observation"):
            model.predict(bad)
    for learning_starts in (100, 0):  # warm-up from the base policy, and the actor's rollout
        model = DSRLNA("MlpPolicy", NaNObservationEnv(), base_policy=constant_base(), learning_starts=learning_starts)
        with pytest.raises(ValueError, match="non-finite observation"):
            model.learn(10)


def test_a_nan_learning_rate_stops_training_before_any_weight_changes():
    def schedule(progress_remaining: float) -> float:
        return 1e-3 if progress_remaining > 0.5 else float("nan")

    model = DSRLNA(
        "MlpPolicy", TargetBandit(), base_policy=constant_base(), learning_rate=schedule, learning_starts=5, batch_size=4
    )
    with pytest.raises(FloatingPointError, match="learning-rate schedule"):
        model.learn(20)
    for module in (model.actor, model.critic, model.noise_critic):
        assert all(th.isfinite(parameter).all() for parameter in module.parameters())


def test_bad_input_errors():
    base = constant_base()
    for bad in (0.0, float("inf")):
        with pytest.raises(ValueError, match="noise_bound"):
            DSRLNA("MlpPolicy", TargetBandit(), base_policy=base, noise_bound=bad)
    with pytest.raises(ValueError, match="observation space"):
        DSRLNA("MlpPolicy", "Pendulum-v1", base_policy=base)
    with pytest.raises(ValueError, match="needs its base policy"):
        DSRLNA("MlpPolicy", TargetBandit())
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="noise_critic_samples"):
            DSRLNA("MlpPolicy", TargetBandit(), base_policy=base, noise_critic_samples=bad)
    assert DSRLNA("MlpPolicy", TargetBandit(), base_policy=base, noise_critic_samples=np.int64(2)).noise_critic_samples == 2


def test_the_callers_policy_kwargs_dict_is_left_unchanged():
    policy_kwargs = {"net_arch": [8]}
    DSRLNA("MlpPolicy", TargetBandit(), base_policy=constant_base(), policy_kwargs=policy_kwargs)
    assert policy_kwargs == {"net_arch": [8]}
