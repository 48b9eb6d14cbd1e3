"""DSRL noise-space and residual wrappers: check_env, one base call per step, decoding, schedules, what an off-policy
agent stores under progressive exploration, the caller's base left alone, (2, 2) actions, NaN observations, errors."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper, VecNormalize

from sb3_flow import DSRLNA, FlowBC, FlowPolicy
from sb3_flow.common.demonstrations import Demonstrations
from sb3_flow.wrappers import (
    NoiseActionWrapper,
    ResidualActionWrapper,
    VecNoiseActionWrapper,
    VecResidualActionWrapper,
    ZeroInitActorCallback,
    zero_init_actor,
    zero_init_residual,
)
from tests.helpers import BimodalEnv, DictObsEnv, bimodal_demonstrations
from tests.test_dsrl_na import SquareActionEnv, square_base


def pendulum_policy(seed: int = 0) -> FlowPolicy:
    th.manual_seed(seed)
    env = gym.make("Pendulum-v1")
    return FlowPolicy(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[16, 16], n_flow_steps=3)


def count_calls(policy: FlowPolicy) -> dict[str, int]:
    """Count the later ``policy.sample`` calls and the rows they are asked for."""
    counts = {"calls": 0, "rows": 0}
    sample = policy.sample

    def counting_sample(obs, *args, **kwargs):
        counts["calls"] += 1
        counts["rows"] += obs.shape[0]
        return sample(obs, *args, **kwargs)

    policy.sample = counting_sample
    return counts


@pytest.mark.parametrize(
    "make",
    [
        lambda env, policy: NoiseActionWrapper(env, policy, noise_bound=1.5),
        lambda env, policy: ResidualActionWrapper(env, policy),
        lambda env, policy: ResidualActionWrapper(env, policy, append_base_action=True, base_noise="random"),
    ],
)
def test_wrappers_pass_gymnasium_and_sb3_env_checks(make):
    wrapped = make(gym.make("Pendulum-v1"), pendulum_policy())
    gym_check_env(wrapped, skip_render_check=True)
    sb3_check_env(wrapped, warn=True)


def test_noise_wrapper_executes_the_base_policy_from_the_scaled_noise():
    policy = pendulum_policy()
    env = NoiseActionWrapper(gym.make("Pendulum-v1"), policy, noise_bound=2.0)
    obs, _ = env.reset(seed=0)
    agent_action = np.array([0.5], dtype=np.float32)
    _, _, _, _, info = env.step(agent_action)
    with th.no_grad():
        expected = policy.sample(th.as_tensor(obs[None]), noise=th.tensor([[1.0]])).numpy() * 2.0
    np.testing.assert_allclose(info["env_action"], expected[0], atol=1e-6)
    np.testing.assert_allclose(info["noise"], [1.0])
    # Out-of-range agent actions are clipped to the bound, not passed through.
    _, _, _, _, info = env.step(np.array([5.0], dtype=np.float32))
    np.testing.assert_allclose(info["noise"], [2.0])


def test_vec_wrappers_call_the_base_policy_once_per_step_for_all_envs():
    venv = VecNoiseActionWrapper(make_vec_env("Pendulum-v1", n_envs=4, seed=0), pendulum_policy())
    counts = count_calls(venv.base_policy)
    venv.reset()
    for _ in range(5):
        venv.step(np.zeros((4, 1), dtype=np.float32))
    assert counts == {"calls": 5, "rows": 20}

    venv = VecResidualActionWrapper(make_vec_env("Pendulum-v1", n_envs=4, seed=0), pendulum_policy())
    counts = count_calls(venv.core.base_policy)
    venv.reset()  # the residual wrapper asks for the base action when the observation arrives
    assert counts["calls"] == 1
    for _ in range(5):
        venv.step(np.zeros((4, 1), dtype=np.float32))
    assert counts == {"calls": 6, "rows": 24}


def test_single_env_wrappers_call_the_base_policy_once_per_step():
    env = NoiseActionWrapper(gym.make("Pendulum-v1"), pendulum_policy())
    counts = count_calls(env.base_policy)
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros(1, dtype=np.float32))
    assert counts["calls"] == 3
    env = ResidualActionWrapper(gym.make("Pendulum-v1"), pendulum_policy())
    counts = count_calls(env.core.base_policy)
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros(1, dtype=np.float32))
    assert counts["calls"] == 4  # reset + 3 steps


def test_vec_and_single_noise_wrappers_agree():
    policy = pendulum_policy()
    single = NoiseActionWrapper(gym.make("Pendulum-v1"), policy)
    obs, _ = single.reset(seed=3)
    venv = VecNoiseActionWrapper(make_vec_env("Pendulum-v1", n_envs=1, seed=3), policy)
    vec_obs = venv.reset()
    np.testing.assert_allclose(vec_obs[0], obs)
    action = np.array([[-0.3]], dtype=np.float32)
    _, _, _, _, info = single.step(action[0])
    _, _, _, infos = venv.step(action)
    np.testing.assert_allclose(infos[0]["env_action"], info["env_action"], atol=1e-6)


def test_residual_combines_clips_and_appends_the_base_action():
    policy = pendulum_policy()
    env = ResidualActionWrapper(gym.make("Pendulum-v1"), policy, residual_scale=0.25, append_base_action=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4,) and env.observation_space.shape == (4,)
    base_normalized = obs[3]
    _, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    expected = np.clip(base_normalized + 0.25, -1, 1) * 2.0
    np.testing.assert_allclose(info["env_action"], [expected], atol=1e-6)
    np.testing.assert_allclose(info["base_action"], [base_normalized * 2.0], atol=1e-6)
    # Zero residual leaves the base action unchanged.
    obs, _ = env.reset(seed=1)
    _, _, _, _, info = env.step(np.array([0.0], dtype=np.float32))
    np.testing.assert_allclose(info["env_action"], info["base_action"], atol=1e-6)
    dict_env = ResidualActionWrapper(DictObsEnv(), _dict_policy(), append_base_action=True)
    dict_obs, _ = dict_env.reset(seed=0)
    assert set(dict_obs) == {"position", "goal", "base_action"}
    gym_check_env(dict_env, skip_render_check=True)


def _dict_policy() -> FlowPolicy:
    from sb3_flow.policies import MultiInputPolicy

    env = DictObsEnv()
    return MultiInputPolicy(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[8])


def test_progressive_exploration_ramps_up():
    env = ResidualActionWrapper(gym.make("Pendulum-v1"), pendulum_policy(), progressive_steps=400, seed=0)
    env.reset(seed=0)
    applied = []
    for _ in range(800):
        _, _, terminated, truncated, info = env.step(np.ones(1, dtype=np.float32))
        applied.append(info["residual_applied"])
        if terminated or truncated:
            env.reset()
    applied = np.array(applied)
    assert applied[:100].mean() < 0.3 and 0.3 < applied[200:400].mean() < 1.0 and applied[400:].all()


def test_zero_init_residual_starts_at_the_base_action():
    policy = pendulum_policy()
    for algo in (SAC, TD3):
        env = ResidualActionWrapper(gym.make("Pendulum-v1"), policy)
        model = algo("MlpPolicy", env, seed=0, learning_starts=0)
        zero_init_residual(model)
        obs, _ = env.reset(seed=0)
        residual, _ = model.predict(obs, deterministic=True)
        np.testing.assert_allclose(residual, [0.0], atol=1e-7)
        _, _, _, _, info = env.step(residual)
        np.testing.assert_allclose(info["env_action"], info["base_action"], atol=1e-6)


def test_zero_init_actor_starts_dsrl_agents_at_the_base_deterministic_action():
    policy = pendulum_policy()
    env = NoiseActionWrapper(gym.make("Pendulum-v1"), policy)
    obs, _ = env.reset(seed=0)
    base_action, _ = policy.predict(obs, deterministic=True)  # zero initial noise
    sac = SAC("MlpPolicy", env, seed=0)
    noise_before, _ = sac.predict(obs, deterministic=True)
    assert np.abs(noise_before).max() > 1e-3  # a random head picks some other noise
    zero_init_actor(sac)
    noise, _ = sac.predict(obs, deterministic=True)
    np.testing.assert_allclose(noise, [0.0], atol=1e-7)
    _, _, _, _, info = env.step(noise)
    np.testing.assert_allclose(info["env_action"], base_action, atol=1e-6)

    # DSRLNA does it by default (start_at_base=True)
    action, _ = DSRLNA("MlpPolicy", "Pendulum-v1", base_policy=policy, seed=0).predict(obs, deterministic=True)
    np.testing.assert_allclose(action, base_action, atol=1e-6)
    action, _ = DSRLNA("MlpPolicy", "Pendulum-v1", base_policy=policy, start_at_base=False, seed=0).predict(
        obs, deterministic=True
    )
    assert np.abs(action - base_action).max() > 1e-3
    assert zero_init_residual is zero_init_actor
    with pytest.raises(ValueError, match="actor head"):
        zero_init_actor(FlowBCLike())


def test_zero_init_callback_zeroes_fresh_runs_only():
    env = NoiseActionWrapper(gym.make("Pendulum-v1"), pendulum_policy())
    model = SAC("MlpPolicy", env, learning_starts=50, seed=0)
    model.learn(10, callback=ZeroInitActorCallback())  # before learning_starts: the head stays zero
    assert not model.actor.mu.weight.any() and not model.actor.mu.bias.any()
    model.learn(60, reset_num_timesteps=False)  # gradient steps move it
    trained = model.actor.mu.weight.detach().clone()
    assert trained.any()
    model.learning_starts = 10**6  # no gradient step in the next call: only the callback could change the head
    model.learn(5, callback=ZeroInitActorCallback(), reset_num_timesteps=False)  # a continued run keeps its actor
    assert th.equal(model.actor.mu.weight.detach(), trained)


class FlowBCLike:
    """An object with a policy that has neither an actor nor an action head."""

    policy = th.nn.Linear(1, 1)


def test_sac_trains_on_wrapped_vec_env_with_vecnormalize():
    policy = pendulum_policy()
    venv = VecNormalize(VecNoiseActionWrapper(make_vec_env("Pendulum-v1", n_envs=2, seed=0), policy))
    model = SAC("MlpPolicy", venv, learning_starts=50, seed=0)
    model.learn(120)
    assert model.num_timesteps == 120  # counted in environment steps
    venv = VecResidualActionWrapper(make_vec_env("Pendulum-v1", n_envs=2, seed=0), policy, append_base_action=True)
    SAC("MlpPolicy", venv, learning_starts=50, seed=0).learn(100)


def test_bad_input_errors():
    policy = pendulum_policy()
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise_bound"):
            NoiseActionWrapper(gym.make("Pendulum-v1"), policy, noise_bound=bad)
        with pytest.raises(ValueError, match="residual_scale"):
            ResidualActionWrapper(gym.make("Pendulum-v1"), policy, residual_scale=bad)
    with pytest.raises(TypeError, match="Box action space"):
        NoiseActionWrapper(gym.make("CartPole-v1"), policy)
    with pytest.raises(ValueError, match="observation space"):
        NoiseActionWrapper(gym.make("MountainCarContinuous-v0"), policy)
    with pytest.raises(ValueError, match="observation space"):
        VecResidualActionWrapper(make_vec_env("MountainCarContinuous-v0", n_envs=1), policy)
    with pytest.raises(ValueError, match="base_noise"):
        ResidualActionWrapper(gym.make("Pendulum-v1"), policy, base_noise="gaussian")
    with pytest.raises(FileNotFoundError):
        NoiseActionWrapper(gym.make("Pendulum-v1"), "no_such_policy.zip")
    env = NoiseActionWrapper(gym.make("Pendulum-v1"), policy)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan], dtype=np.float32))


def test_vec_residual_terminal_observations_carry_the_base_action_too():
    policy = pendulum_policy()
    venv = VecResidualActionWrapper(make_vec_env("Pendulum-v1", n_envs=2, seed=0), policy, append_base_action=True)
    venv.reset()
    for _ in range(200):  # Pendulum truncates after 200 steps
        _, _, dones, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
    assert dones.all()
    for info in infos:
        terminal = info["terminal_observation"]
        assert terminal.shape == (4,)
        with th.no_grad():
            base = policy.sample(th.as_tensor(terminal[None, :3]), deterministic=True).numpy()[0]
        np.testing.assert_allclose(terminal[3:], base, atol=1e-6)
    # An off-policy agent stores those terminal observations in its replay buffer.
    model = SAC("MlpPolicy", venv, learning_starts=10, gradient_steps=1, seed=0, buffer_size=500)
    model.learn(220)
    assert model.replay_buffer.next_observations.shape[-1] == 4


def test_small_batch_inference_switches_onednn_off_only_for_small_cpu_batches():
    from sb3_flow.common.utils import ONEDNN_MIN_ROWS, small_batch_inference

    assert th.backends.mkldnn.enabled
    with small_batch_inference(1, "cpu"):
        assert not th.backends.mkldnn.enabled
    assert th.backends.mkldnn.enabled  # restored
    with small_batch_inference(ONEDNN_MIN_ROWS, "cpu"):
        assert th.backends.mkldnn.enabled
    with pytest.raises(RuntimeError), small_batch_inference(1, "cpu"):
        raise RuntimeError("boom")
    assert th.backends.mkldnn.enabled  # restored after an error too
    # The wrapper's actions agree with the policy's own (oneDNN) integration to float rounding.
    policy = pendulum_policy()
    obs = th.randn(3, 3)
    with th.no_grad():
        reference = policy.sample(obs, noise=th.zeros(3, 1))
        with small_batch_inference(3, "cpu"):
            fast = policy.sample(obs, noise=th.zeros(3, 1))
    assert th.allclose(fast, reference, atol=1e-5)


class InfoRecorder(BaseCallback):
    """Keeps every rollout step's infos (one list per step, one info per environment)."""

    def __init__(self):
        super().__init__()
        self.steps: list[list[dict]] = []

    def _on_step(self) -> bool:
        self.steps.append([dict(info) for info in self.locals["infos"]])
        return True


def check_stored_residuals_were_executed(model: SAC, steps: list[list[dict]], residual_scale: float, policy) -> None:
    """Every stored action is the residual the environment executed: it rebuilds the executed env action exactly."""
    skipped = 0
    for step, infos in enumerate(steps):
        for env_index, info in enumerate(infos):
            stored = model.replay_buffer.actions[step, env_index]
            np.testing.assert_array_equal(stored, info["executed_residual"])
            base = policy.scale_action(info["base_action"])
            rebuilt = policy.unscale_action(np.clip(base + residual_scale * stored, -1, 1))
            np.testing.assert_allclose(rebuilt, info["env_action"], atol=1e-5)
            if not info["residual_applied"]:
                skipped += 1
                assert not stored.any()
    assert 0 < skipped < sum(len(infos) for infos in steps)  # both kinds of step were checked


def test_progressive_exploration_stores_the_residual_that_was_executed():
    from sb3_flow.wrappers import ExecutedResidualDictReplayBuffer, ExecutedResidualReplayBuffer

    policy = pendulum_policy()
    venv = VecResidualActionWrapper(
        make_vec_env("Pendulum-v1", n_envs=2, seed=0), policy, residual_scale=0.5, progressive_steps=150, seed=0
    )
    # Warm-up only (no gradient step): SAC samples uniform residuals, almost never zero.
    model = SAC("MlpPolicy", venv, learning_starts=10**6, replay_buffer_class=ExecutedResidualReplayBuffer, seed=0)
    recorder = InfoRecorder()
    model.learn(120, callback=recorder)
    check_stored_residuals_were_executed(model, recorder.steps, 0.5, venv.core.base_policy)

    # The gym wrapper, with a Dict observation that carries the base action.
    env = ResidualActionWrapper(DictObsEnv(), _dict_policy(), append_base_action=True, progressive_steps=40, seed=0)
    model = SAC("MultiInputPolicy", env, learning_starts=10**6, replay_buffer_class=ExecutedResidualDictReplayBuffer, seed=0)
    recorder = InfoRecorder()
    model.learn(60, callback=recorder)
    check_stored_residuals_were_executed(model, recorder.steps, 0.1, env.core.base_policy)


def small_flow_bc(env: gym.Env, n: int = 256) -> FlowBC:
    """A FlowBC trained for 3 steps on random in-range demonstrations of ``env``."""
    env.observation_space.seed(0)
    env.action_space.seed(0)
    observations = np.array([env.observation_space.sample() for _ in range(n)])
    actions = np.array([env.action_space.sample() for _ in range(n)])
    starts = np.zeros(n, dtype=bool)
    starts[0] = True
    demos = Demonstrations(
        observations, actions, np.zeros(n), observations, np.zeros(n, bool), np.zeros(n, bool), starts
    )  # fmt: skip
    return FlowBC("MlpPolicy", env, demos, batch_size=32, policy_kwargs={"net_arch": [8]}, seed=0).learn(3)


def make_every_wrapper(source) -> list:
    return [
        NoiseActionWrapper(BimodalEnv(), source),
        VecNoiseActionWrapper(DummyVecEnv([BimodalEnv]), source),
        ResidualActionWrapper(BimodalEnv(), source, append_base_action=True),
        VecResidualActionWrapper(DummyVecEnv([BimodalEnv]), source, append_base_action=True),
    ]


def test_wrappers_leave_the_callers_flow_bc_policy_unchanged():
    bc = FlowBC("MlpPolicy", BimodalEnv(), bimodal_demonstrations(256), batch_size=32, policy_kwargs={"net_arch": [8]})
    bc.learn(3)
    bc.policy.set_training_mode(True)
    flags = [parameter.requires_grad for parameter in bc.policy.parameters()]
    device = bc.policy.device
    for wrapped in make_every_wrapper(bc) + make_every_wrapper(bc.policy):
        wrapped.reset()
        wrapped.step(np.zeros((1, 1), dtype=np.float32) if isinstance(wrapped, VecEnvWrapper) else np.zeros(1, np.float32))
        base = wrapped.core.base_policy if hasattr(wrapped, "core") else wrapped.base_policy
        assert base is not bc.policy and not base.training
        assert not any(parameter.requires_grad for parameter in base.parameters())
    assert [parameter.requires_grad for parameter in bc.policy.parameters()] == flags and all(flags)
    assert bc.policy.training and bc.policy.device == device
    before = [parameter.detach().clone() for parameter in bc.policy.parameters()]
    bc.learn(3)
    assert any(not th.equal(a, b) for a, b in zip(before, bc.policy.parameters(), strict=True))


def test_single_env_wrappers_record_the_base_policy_not_the_model(tmp_path):
    bc = small_flow_bc(gym.make("Pendulum-v1"))
    bc.set_logger(configure(str(tmp_path), ["csv"]))  # an open file, like tensorboard's writer: the model cannot be copied
    for make in (NoiseActionWrapper, ResidualActionWrapper):
        wrapped = make(gym.make("Pendulum-v1"), bc)
        recorded = wrapped.spec.additional_wrappers[-1].kwargs["base_policy"]
        assert isinstance(recorded, FlowPolicy) and recorded is not bc.policy  # not the model and its demonstrations
        remade = gym.make(wrapped.spec)  # gymnasium re-creates the wrapper from its spec
        actions = []
        for env in (wrapped, remade):
            env.reset(seed=0)
            actions.append(env.step(np.full(1, 0.3, dtype=np.float32))[4]["env_action"])
        np.testing.assert_array_equal(actions[0], actions[1])
    # A base given as a file is recorded as that path.
    bc.policy.save(str(tmp_path / "base.pt"))
    wrapped = NoiseActionWrapper(gym.make("Pendulum-v1"), tmp_path / "base.pt")
    assert wrapped.spec.additional_wrappers[-1].kwargs["base_policy"] == str(tmp_path / "base.pt")


def test_wrappers_with_a_2x2_action_space():
    policy = square_base()
    obs = np.zeros(3, dtype=np.float32)
    expected, _ = policy.predict(obs, deterministic=True)  # zero noise, in env units
    for wrapped in (NoiseActionWrapper(SquareActionEnv(), policy), ResidualActionWrapper(SquareActionEnv(), policy)):
        wrapped.reset(seed=0)
        _, _, _, _, info = wrapped.step(np.zeros(4, dtype=np.float32))
        assert info["env_action"].shape == (2, 2)
        np.testing.assert_allclose(info["env_action"], expected, atol=1e-5)
        np.testing.assert_allclose(wrapped.unwrapped.received[-1], expected, atol=1e-5)
    residual = ResidualActionWrapper(SquareActionEnv(), policy, residual_scale=0.5)
    residual.reset(seed=0)
    _, _, _, _, info = residual.step(np.array([1.0, -1.0, 1.0, -1.0], dtype=np.float32))
    np.testing.assert_allclose(info["base_action"], expected, atol=1e-5)
    low, high = SquareActionEnv.action_space.low, SquareActionEnv.action_space.high
    normalized = np.clip(2 * (expected - low) / (high - low) - 1 + 0.5 * np.array([[1, -1], [1, -1]]), -1, 1)
    np.testing.assert_allclose(info["env_action"], low + (normalized + 1) * (high - low) / 2, atol=1e-5)
    for venv in (
        VecNoiseActionWrapper(DummyVecEnv([SquareActionEnv] * 2), policy),
        VecResidualActionWrapper(DummyVecEnv([SquareActionEnv] * 2), policy),
    ):
        venv.reset()
        _, _, _, infos = venv.step(np.zeros((2, 4), dtype=np.float32))
        for info in infos:
            np.testing.assert_allclose(info["env_action"], expected, atol=1e-5)


class NaNAfter(gym.Wrapper):
    """Observations turn NaN from step ``n`` on; records the actions the environment received."""

    def __init__(self, env: gym.Env, n: int = 3):
        super().__init__(env)
        self.n, self.steps, self.received = n, 0, []

    def step(self, action):
        self.received.append(np.array(action))
        self.steps += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        return (obs * np.nan if self.steps >= self.n else obs), reward, terminated, truncated, info


def test_nan_observations_stop_at_the_wrappers_base_calls():
    policy = pendulum_policy()
    for make in (NoiseActionWrapper, ResidualActionWrapper):
        inner = NaNAfter(gym.make("Pendulum-v1"))
        wrapped = make(inner, policy)
        obs, _ = wrapped.reset(seed=0)
        with pytest.raises(ValueError, match="non-finite observation"):
            for _ in range(5):
                # An agent's action on a NaN observation is NaN too: the observation is the cause to report.
                action = np.full(1, np.nan if np.isnan(obs).any() else 0.0, dtype=np.float32)
                obs, *_ = wrapped.step(action)
        assert inner.received and np.isfinite(np.array(inner.received)).all()
    for make in (VecNoiseActionWrapper, VecResidualActionWrapper):
        inner = NaNAfter(gym.make("Pendulum-v1"))
        venv = make(DummyVecEnv([lambda inner=inner: inner]), policy)
        venv.reset()
        with pytest.raises(ValueError, match="non-finite observation"):
            for _ in range(5):
                venv.step(np.zeros((1, 1), dtype=np.float32))
        assert inner.received and np.isfinite(np.array(inner.received)).all()
