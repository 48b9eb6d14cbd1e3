"""Every algorithm, wrapper and sampler on a CUDA device: trains, keeps its tensors there, round-trips through save.

Skipped without a GPU (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import SAC

from sb3_flow import (
    CFGRL,
    DSRLNA,
    FBRAC,
    FQL,
    IFQL,
    BestOfNPolicy,
    CriticGuidedPolicy,
    FlowBC,
    FlowPPO,
    GaussianBC,
    ReinFlow,
    ReturnHeadFlowPolicy,
)
from sb3_flow.wrappers import NoiseActionWrapper, ResidualActionWrapper

pytestmark = pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA device")

ENV = "Pendulum-v1"
OBS = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
SMALL = {"net_arch": [32, 32]}
OFFLINE = {"policy_kwargs": {"net_arch": [32, 32], "critic_net_arch": [32, 32]}, "batch_size": 32}


def on_cuda(module: th.nn.Module) -> bool:
    return all(parameter.device.type == "cuda" for parameter in module.parameters())


def assert_round_trip(model, tmp_path, **load_kwargs):
    model.save(tmp_path / "model")
    loaded = type(model).load(tmp_path / "model", device="cuda", **load_kwargs)
    assert on_cuda(loaded.policy)
    np.testing.assert_allclose(
        loaded.predict(OBS, deterministic=True)[0], model.predict(OBS, deterministic=True)[0], atol=1e-5
    )


@pytest.fixture(scope="module")
def flow_bc(pendulum_demos):
    return FlowBC("MlpPolicy", ENV, pendulum_demos, policy_kwargs=SMALL, batch_size=64, device="cuda", seed=0).learn(50)


def test_behaviour_cloning_on_cuda(pendulum_demos, flow_bc, tmp_path):
    assert on_cuda(flow_bc.policy)
    assert_round_trip(flow_bc, tmp_path)
    gaussian = GaussianBC("MlpPolicy", ENV, pendulum_demos, policy_kwargs=SMALL, device="cuda", seed=0).learn(20)
    assert on_cuda(gaussian.policy)
    head = FlowBC(ReturnHeadFlowPolicy, ENV, pendulum_demos, policy_kwargs=SMALL, device="cuda", seed=0).learn(20)
    head.policy.guidance_scale = 0.01
    assert head.predict(OBS)[0].shape == (4, 1)


@pytest.mark.parametrize("algo", [FlowPPO, ReinFlow])
def test_on_policy_algorithms_on_cuda(algo, tmp_path):
    model = algo("MlpPolicy", ENV, n_steps=32, batch_size=16, n_epochs=1, policy_kwargs=SMALL, device="cuda", seed=0)
    model.learn(64)
    assert on_cuda(model.policy)
    assert_round_trip(model, tmp_path)


def test_steering_on_cuda(flow_bc, tmp_path):
    model = DSRLNA("MlpPolicy", ENV, base_policy=flow_bc, learning_starts=16, batch_size=16, device="cuda", seed=0)
    model.learn(48)
    assert on_cuda(model.policy.actor)
    for wrapper in (NoiseActionWrapper, ResidualActionWrapper):
        env = wrapper(gym.make(ENV), base_policy=flow_bc, device="cuda")
        sac = SAC("MlpPolicy", env, learning_starts=16, batch_size=16, device="cuda", seed=0).learn(32)
        assert sac.predict(env.reset(seed=0)[0])[0].shape == env.action_space.shape


@pytest.mark.parametrize("algo", [FQL, FBRAC, IFQL, CFGRL])
def test_critic_algorithms_offline_then_online_on_cuda(algo, pendulum_demos, tmp_path):
    model = algo("MlpPolicy", ENV, dataset=pendulum_demos, n_flow_steps=4, device="cuda", seed=0, **OFFLINE)
    model.learn_offline(30)
    model.learn(40)
    assert on_cuda(model.policy)
    assert model.replay_buffer.n_online == 40
    assert_round_trip(model, tmp_path)


def test_q_chunking_on_cuda(pendulum_demos, tmp_path):
    model = FQL("MlpPolicy", ENV, dataset=pendulum_demos, action_horizon=3, n_flow_steps=4, device="cuda", seed=0, **OFFLINE)
    model.learn_offline(20)
    model.learn(10)
    assert on_cuda(model.policy) and model.env.get_attr("env_steps") == [30]
    model.save(tmp_path / "qc")
    loaded = FQL.load(tmp_path / "qc", env=ENV, device="cuda")
    np.testing.assert_allclose(
        loaded.predict(OBS, deterministic=True)[0], model.predict(OBS, deterministic=True)[0], atol=1e-5
    )


def test_samplers_on_cuda(flow_bc, pendulum_demos, tmp_path):
    ifql = IFQL("MlpPolicy", ENV, dataset=pendulum_demos, n_flow_steps=4, device="cuda", seed=0, **OFFLINE)
    ifql.learn_offline(20)
    for sampler in (BestOfNPolicy(flow_bc, ifql, n_samples=8), CriticGuidedPolicy(flow_bc, ifql, guidance_scale=0.01)):
        assert on_cuda(sampler)
        actions = sampler.predict(OBS, deterministic=True)[0]
        sampler.save(tmp_path / "sampler.pt")
        loaded = type(sampler).load(tmp_path / "sampler.pt", device="cuda")
        np.testing.assert_allclose(loaded.predict(OBS, deterministic=True)[0], actions, atol=1e-5)


def test_compiled_sampler_on_cuda(flow_bc):
    """CUDA graphs of the K-step loop: the eager sampler's results, and outputs that the next replay does not overwrite."""
    policy = flow_bc.policy
    observations = th.as_tensor(OBS, device="cuda")
    stds = th.full((policy.n_flow_steps, 1, 1), 0.1, device="cuda")
    step_noises = th.randn(policy.n_flow_steps, 4, 1, device="cuda")
    with th.no_grad():
        eager = policy.integrate(
            observations, deterministic=True, noise_std_fn=lambda x, t, k: stds[k], step_noises=step_noises
        )
        policy.compile_sampler()
        try:
            first = policy.integrate(
                observations, deterministic=True, noise_std_fn=lambda x, t, k: stds[k], step_noises=step_noises
            )
            kept = first.actions.clone()
            policy.integrate(observations, noise=th.randn(4, 1, device="cuda"), noise_std_fn=lambda x, t, k: stds[k])
        finally:
            policy.eager_sampler()
    assert policy.compiled_integrator is None
    th.testing.assert_close(first.actions, eager.actions, atol=1e-4, rtol=1e-4)
    th.testing.assert_close(first.step_log_probs, eager.step_log_probs, atol=1e-3, rtol=1e-4)
    assert th.equal(first.actions, kept)
