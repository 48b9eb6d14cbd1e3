"""Distill back: a steered policy (DSRL, residual, DSRL-NA, best-of-N) recorded in the original spaces and cloned into
one FlowPolicy; return filters, mixing with demonstrations, the user's objects left alone, bad input."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_flow import DSRLNA, BestOfNPolicy, FlowBC
from sb3_flow.bc import collect_steered_demonstrations, distill, filter_episodes, steered_policy
from sb3_flow.common.demonstrations import Demonstrations, collect_demonstrations
from sb3_flow.wrappers import NoiseActionWrapper, ResidualActionWrapper, VecNoiseActionWrapper, zero_init_actor

SHIFT = 0.6  # the agent's constant action: residual_scale * SHIFT = 0.3 normalized = 0.6 in env units
RESIDUAL_SCALE = 0.5


class LinearEnv(gym.Env):
    """Uniform 2-d observations; a [-2, 2] action; the reward varies with the state, so episode returns differ."""

    def __init__(self, length: int = 20):
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Box(-2.0, 2.0, (1,), np.float32)
        self.length = length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._obs = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._obs, {}

    def step(self, action):
        self._t += 1
        reward = float(self._obs[1]) - abs(float(action[0]) - float(self._obs[0]))
        self._obs = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._obs, reward, False, self._t >= self.length, {}


@pytest.fixture(scope="module")
def base() -> FlowBC:
    """A FlowBC base whose deterministic action is about the first observation (inside the box, away from its edges)."""
    demos = collect_demonstrations(LinearEnv(), lambda obs: np.array([obs[0]], np.float32), 30, seed=0)
    model = FlowBC("MlpPolicy", LinearEnv(), demos, n_flow_steps=4, learning_rate=1e-3, seed=0, device="cpu",
                   policy_kwargs={"net_arch": [32, 32]})  # fmt: skip
    return model.learn(300)


def constant_sac(env, value: float = SHIFT, seed: int = 0) -> SAC:
    """A real SAC whose deterministic action is ``value`` in every state (zeroed mean head, bias atanh(value))."""
    agent = SAC("MlpPolicy", env, policy_kwargs={"net_arch": [8]}, buffer_size=10, seed=seed, device="cpu")
    zero_init_actor(agent)
    with th.no_grad():
        agent.actor.mu.bias.fill_(float(np.arctanh(value)))
    return agent


def residual_env(base, **kwargs) -> ResidualActionWrapper:
    options = {"residual_scale": RESIDUAL_SCALE, "append_base_action": True, **kwargs}
    return ResidualActionWrapper(LinearEnv(), base, **options)


def held_out_observations(n: int = 200) -> np.ndarray:
    return np.random.default_rng(123).uniform(-1, 1, (n, 2)).astype(np.float32)


def test_distill_reproduces_a_residual_policy_with_a_constant_shift(base):
    env = residual_env(base)
    agent = constant_sac(env)
    model = distill(agent, env, n_episodes=10, n_gradient_steps=300, flow_bc_kwargs={"learning_rate": 3e-3}, seed=0)
    obs = held_out_observations()
    base_actions = base.policy.predict(obs, deterministic=True)[0]
    expected = np.clip(base_actions + 2.0 * RESIDUAL_SCALE * SHIFT, -2.0, 2.0)  # half-width 2: env units
    distilled = model.policy.predict(obs, deterministic=True)[0]
    assert np.abs(distilled - expected).max() < 0.1
    assert np.abs(distilled - base_actions).mean() > 0.5  # the shift, not the base
    # A standalone flow: a plain FlowPolicy in the original spaces, no wrapper or agent inside.
    assert type(model.policy).__name__ == "FlowPolicy" and model.policy.observation_space.shape == (2,)


def _rollout_by_hand(agent, wrapped: gym.Env, episodes: int, seed: int) -> tuple[list, list]:
    """The original observations and the executed env actions of the wrapped env, stepped as SB3 would step it."""
    original, executed = [], []
    for episode in range(episodes):
        obs, _ = wrapped.reset(seed=seed + episode)
        done = False
        while not done:
            original.append(obs[:2].copy())  # the residual wrapper appends the base action to the original observation
            obs, _, terminated, truncated, info = wrapped.step(agent.predict(obs, deterministic=True)[0])
            executed.append(info["env_action"])
            done = terminated or truncated
    return original, executed


@pytest.mark.parametrize("method", ["dsrl", "residual"])
def test_rollouts_are_recorded_in_the_original_spaces_with_the_executed_env_actions(base, method):
    def make() -> gym.Env:
        return NoiseActionWrapper(LinearEnv(), base, noise_bound=1.5) if method == "dsrl" else residual_env(base)

    env = make()
    agent = SAC("MlpPolicy", env, policy_kwargs={"net_arch": [8]}, buffer_size=10, seed=1, device="cpu")  # state-dependent
    demos = collect_steered_demonstrations(agent, env, n_episodes=2, seed=7)
    original, executed = _rollout_by_hand(agent, make(), 2, 7)
    assert demos.observations.shape == (40, 2) and demos.actions.shape == (40, 1)  # not the wrapper's (3,) or [-1, 1]
    np.testing.assert_allclose(demos.observations, np.array(original), atol=1e-6)
    np.testing.assert_allclose(demos.actions, np.array(executed), atol=1e-5)
    if method == "residual":
        assert np.abs(demos.actions).max() > 1.0  # env units ([-2, 2]), not the agent's [-1, 1]
    assert demos.n_episodes == 2 and demos.truncations.sum() == 2


def test_vec_wrappers_and_vec_normalize_above_them_are_reproduced(base):
    venv = VecNormalize(VecNoiseActionWrapper(DummyVecEnv([LinearEnv]), base, noise_bound=1.5), norm_reward=False)
    venv.obs_rms.mean[:] = [0.5, -0.5]
    venv.obs_rms.var[:] = [0.1, 4.0]
    venv.training = False
    agent = SAC("MlpPolicy", venv, policy_kwargs={"net_arch": [8]}, buffer_size=10, seed=2, device="cpu")
    steered = steered_policy(agent)  # the agent's own VecEnv
    assert steered.method == "dsrl" and isinstance(steered.env.unwrapped, LinearEnv)
    venv.seed(3)
    obs = venv.reset()
    for _ in range(5):
        raw = venv.get_original_obs()
        expected_action = steered.predict(raw, deterministic=True)[0]
        obs, _, _, infos = venv.step(agent.predict(obs, deterministic=True)[0])
        np.testing.assert_allclose(infos[0]["env_action"], expected_action[0], atol=1e-5)


def test_agents_on_make_vec_env_wrapper_class_are_found_in_their_own_env(base):
    wrapper = lambda env: residual_env_around(env, base)  # noqa: E731
    agent = constant_sac(make_vec_env(LinearEnv, n_envs=1, seed=0, wrapper_class=wrapper))
    steered = steered_policy(agent)
    obs = held_out_observations(8)
    expected = np.clip(base.policy.predict(obs, deterministic=True)[0] + 2.0 * RESIDUAL_SCALE * SHIFT, -2, 2)
    np.testing.assert_allclose(steered.predict(obs, deterministic=True)[0], expected, atol=1e-5)


def residual_env_around(env: gym.Env, base) -> ResidualActionWrapper:
    return ResidualActionWrapper(env, base, residual_scale=RESIDUAL_SCALE, append_base_action=True)


def test_agents_acting_in_the_env_space_dsrl_na_and_best_of_n(base):
    dsrl_na = DSRLNA("MlpPolicy", LinearEnv(), base_policy=base, buffer_size=10, policy_kwargs={"net_arch": [8]}, seed=0)
    critic = SAC("MlpPolicy", LinearEnv(), policy_kwargs={"net_arch": [8]}, buffer_size=10, seed=0)
    best_of_n = BestOfNPolicy(base, critic, n_samples=4)
    obs = held_out_observations(6)
    for agent in (dsrl_na, best_of_n):
        steered = steered_policy(agent, LinearEnv())
        assert steered.method == "direct"
        np.testing.assert_allclose(
            steered.predict(obs, deterministic=True)[0], agent.predict(obs, deterministic=True)[0], atol=1e-6
        )
        model = distill(agent, LinearEnv(), n_episodes=1, n_gradient_steps=2, seed=0)
        assert model.demonstrations.n_episodes == 1


def _demos_with_returns(returns: list[float], length: int = 3) -> Demonstrations:
    n = len(returns) * length
    starts = np.zeros(n, dtype=bool)
    starts[::length] = True
    return Demonstrations(
        observations=np.arange(2 * n, dtype=np.float32).reshape(n, 2),
        actions=np.zeros((n, 1), np.float32),
        rewards=np.repeat(np.asarray(returns, np.float32) / length, length),
        next_observations=np.zeros((n, 2), np.float32),
        terminations=np.zeros(n, bool),
        truncations=np.roll(starts, -1),
        episode_starts=starts,
    )


def test_return_filters_keep_exactly_the_selected_episodes():
    demos = _demos_with_returns([3.0, -1.0, 5.0, 3.0, 0.0])
    by_threshold = filter_episodes(demos, min_return=3.0)
    np.testing.assert_allclose(by_threshold.episode_returns(), [3.0, 5.0, 3.0], atol=1e-5)
    np.testing.assert_array_equal(by_threshold.observations, demos.observations[np.r_[0:3, 6:12]])
    # ceil(0.4 * 5) = 2 episodes: the best (5) and, of the two 3s, the earlier one; kept in their order.
    by_fraction = filter_episodes(demos, top_fraction=0.4)
    np.testing.assert_array_equal(by_fraction.observations, demos.observations[np.r_[0:3, 6:9]])
    assert by_fraction.episode_starts.tolist() == [True, False, False] * 2
    assert filter_episodes(demos) is demos
    with pytest.raises(ValueError, match=r"no episode has a return >= min_return=9 \(the best of 5: 5.0\)"):
        filter_episodes(demos, min_return=9.0)
    with pytest.raises(ValueError, match="not both"):
        filter_episodes(demos, min_return=0.0, top_fraction=0.5)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="top_fraction"):
            filter_episodes(demos, top_fraction=bad)


def test_distill_filters_the_rollouts_and_mixes_in_demonstrations(base, tmp_path):
    env = residual_env(base)
    agent = SAC("MlpPolicy", env, policy_kwargs={"net_arch": [8]}, buffer_size=10, seed=3, device="cpu")
    rollouts = collect_steered_demonstrations(agent, env, n_episodes=6, deterministic=False, seed=5)
    extra = collect_demonstrations(LinearEnv(), lambda obs: np.array([obs[0]], np.float32), 2, seed=99)
    path = extra.save(tmp_path / "extra.npz")
    model = distill(agent, env, n_episodes=6, n_gradient_steps=1, deterministic=False, top_fraction=0.5,
                    demonstrations=path, seed=5)  # fmt: skip
    data = model.demonstrations
    assert data.n_episodes == 3 + 2
    best = np.sort(rollouts.episode_returns())[-3:]
    np.testing.assert_allclose(np.sort(data.episode_returns()[:3]), best, atol=1e-4)  # the same seeded rollouts, filtered
    np.testing.assert_array_equal(data.observations[-len(extra) :], extra.observations)  # the demonstrations as they are
    assert np.std(rollouts.episode_returns()) > 0.1  # the filter had something to choose between


def test_the_flow_keeps_the_base_architecture_and_starts_from_its_weights(base):
    env = residual_env(base)
    agent = constant_sac(env)
    warm = distill(agent, env, n_episodes=1, n_gradient_steps=1, flow_bc_kwargs={"learning_rate": 0.0}, seed=0)
    assert warm.policy.net_arch == [32, 32] and warm.policy.n_flow_steps == 4
    for name, value in base.policy.state_dict().items():
        np.testing.assert_array_equal(warm.policy.state_dict()[name].numpy(), value.numpy())
    cold = distill(agent, env, n_episodes=1, n_gradient_steps=1, warm_start=False, flow_bc_kwargs={"learning_rate": 0.0})
    assert cold.policy.net_arch == [32, 32]
    name = "velocity_net.observation_projection.weight"
    assert not th.equal(cold.policy.state_dict()[name], base.policy.state_dict()[name])
    with pytest.raises(ValueError, match=r"cannot start from the base's weights.*warm_start=False"):
        distill(agent, env, n_episodes=1, n_gradient_steps=1, flow_bc_kwargs={"policy_kwargs": {"net_arch": [16]}})


def test_the_users_agent_base_and_wrapper_are_left_as_they_were(base):
    env = residual_env(base, progressive_steps=100, base_noise="random", seed=0)
    agent = constant_sac(env)
    agent_weights = copy.deepcopy(agent.policy.state_dict())
    base_weights = copy.deepcopy(base.policy.state_dict())
    base_training = base.policy.training
    wrapper_state = (env.core.n_steps, env.core.rng.bit_generator.state, env.core.noise_generator.get_state().clone())
    distill(agent, env, n_episodes=1, n_gradient_steps=2, seed=0)
    for before, after in ((agent_weights, agent.policy.state_dict()), (base_weights, base.policy.state_dict())):
        assert all(th.equal(value, after[name]) for name, value in before.items())
    assert base.policy.training == base_training and all(p.requires_grad for p in base.policy.parameters())
    assert env.core.n_steps == wrapper_state[0] and env.core.rng.bit_generator.state == wrapper_state[1]
    assert th.equal(env.core.noise_generator.get_state(), wrapper_state[2])


def test_bad_input_is_refused_with_what_was_expected(base, tmp_path):
    env = residual_env(base)
    agent = constant_sac(env)
    with pytest.raises(ValueError, match="n_episodes"):
        distill(agent, env, n_episodes=0)
    with pytest.raises(ValueError, match="n_gradient_steps"):
        distill(agent, env, n_gradient_steps=-1)
    with pytest.raises(ValueError, match="not both"):
        distill(agent, env, min_return=0.0, top_fraction=0.5)
    # An agent trained with the base action appended (3-d observations) on a wrapper that does not append it.
    with pytest.raises(ValueError, match=r"steered agent's observation space .* does not match"):
        distill(agent, ResidualActionWrapper(LinearEnv(), base, residual_scale=0.5))
    # Plain SAC on the raw environment: nothing steered, nothing to distill back into.
    with pytest.raises(TypeError, match=r"SAC is not a steered policy.*NoiseActionWrapper"):
        distill(SAC("MlpPolicy", LinearEnv(), buffer_size=10), LinearEnv())
    with pytest.raises(TypeError, match="agent must be an SB3 model or policy"):
        distill(lambda obs: obs, env)
    dsrl_na = DSRLNA("MlpPolicy", LinearEnv(), base_policy=base, buffer_size=10, policy_kwargs={"net_arch": [8]})
    with pytest.raises(ValueError, match="holds a ResidualActionWrapper: pass the original environment"):
        distill(dsrl_na, env)
    with pytest.raises(ValueError, match="observation space"):
        distill(dsrl_na, "Pendulum-v1")
    pendulum = collect_demonstrations("Pendulum-v1", lambda obs: np.zeros(1, np.float32), 1, seed=0)
    with pytest.raises(ValueError, match="Demonstration observations have shape"):
        distill(agent, env, demonstrations=pendulum)
