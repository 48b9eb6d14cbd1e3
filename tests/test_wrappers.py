"""DSRL noise-space and residual wrappers: check_env, one base call per step, decoding, schedules, errors."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from sb3_flow import DSRLNA, FlowPolicy
from sb3_flow.wrappers import (
    NoiseActionWrapper,
    ResidualActionWrapper,
    VecNoiseActionWrapper,
    VecResidualActionWrapper,
    ZeroInitActorCallback,
    zero_init_actor,
    zero_init_residual,
)
from tests.helpers import DictObsEnv


def pendulum_policy(seed: int = 0) -> FlowPolicy:
    th.manual_seed(seed)
    env = gym.make("Pendulum-v1")
    return FlowPolicy(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[16, 16], n_flow_steps=3)


class CountingPolicy(FlowPolicy):
    """A FlowPolicy that counts how often it is asked for actions and for how many rows."""

    calls = 0
    rows = 0

    def sample(self, obs, *args, **kwargs):
        CountingPolicy.calls += 1
        CountingPolicy.rows += obs.shape[0]
        return super().sample(obs, *args, **kwargs)


def counting_policy() -> CountingPolicy:
    env = gym.make("Pendulum-v1")
    CountingPolicy.calls = CountingPolicy.rows = 0
    return CountingPolicy(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[8])


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
    venv = VecNoiseActionWrapper(make_vec_env("Pendulum-v1", n_envs=4, seed=0), counting_policy())
    venv.reset()
    calls_after_reset = CountingPolicy.calls
    for _ in range(5):
        venv.step(np.zeros((4, 1), dtype=np.float32))
    assert CountingPolicy.calls - calls_after_reset == 5 and CountingPolicy.rows == 20

    venv = VecResidualActionWrapper(make_vec_env("Pendulum-v1", n_envs=4, seed=0), counting_policy())
    venv.reset()  # the residual wrapper asks for the base action when the observation arrives
    assert CountingPolicy.calls == 1
    for _ in range(5):
        venv.step(np.zeros((4, 1), dtype=np.float32))
    assert CountingPolicy.calls == 6 and CountingPolicy.rows == 24


def test_single_env_wrappers_call_the_base_policy_once_per_step():
    env = NoiseActionWrapper(gym.make("Pendulum-v1"), counting_policy())
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros(1, dtype=np.float32))
    assert CountingPolicy.calls == 3
    env = ResidualActionWrapper(gym.make("Pendulum-v1"), counting_policy())
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros(1, dtype=np.float32))
    assert CountingPolicy.calls == 4  # reset + 3 steps


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
