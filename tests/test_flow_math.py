"""The shared flow core: path, CFM loss, time sampling, integrators, noise and guidance hooks."""

import pytest
import torch as th

from sb3_flow.common.flow import (
    cfm_loss,
    cfm_loss_weights,
    chain_log_probs,
    gaussian_log_prob,
    integrate,
    interpolate,
    sample_times,
    target_velocity,
    time_grid,
)


def exact_velocity(target: th.Tensor):
    """Velocity field that transports any x to ``target`` in time: v = (a - x) / (1 - t)."""

    def field(x, t):
        return (target - x) / (1.0 - t).unsqueeze(-1).clamp_min(1e-6) if t.dim() else (target - x) / (1.0 - t)

    return field


def test_interpolation_endpoints_and_target():
    noise, action = th.randn(5, 3), th.randn(5, 3)
    assert th.allclose(interpolate(noise, action, th.zeros(5)), noise)
    assert th.allclose(interpolate(noise, action, th.ones(5)), action)
    mid = interpolate(noise, action, th.full((5,), 0.25))
    assert th.allclose(mid, 0.75 * noise + 0.25 * action)
    assert th.allclose(target_velocity(noise, action), action - noise)


def test_cfm_loss_is_zero_for_the_straight_path_velocity_and_keeps_every_draw():
    actions = th.randn(4, 2)
    times = th.rand(4, 3)
    noises = th.randn(4, 3, 2)

    def conditional_field(x, t):
        # For a known (noise, action) pair the path velocity is a - x0; recover x0 from x_t and t.
        x0 = (x - t.unsqueeze(-1) * actions.unsqueeze(1)) / (1.0 - t.unsqueeze(-1))
        return actions.unsqueeze(1) - x0

    losses = cfm_loss(conditional_field, actions, times, noises)
    assert losses.shape == (4, 3)
    assert th.allclose(losses, th.zeros(4, 3), atol=1e-8)

    zero = cfm_loss(lambda x, t: th.zeros_like(x), actions, times, noises)
    expected = (actions.unsqueeze(1) - noises).pow(2).mean(-1)
    assert th.allclose(zero, expected)
    # Same draws, same loss: FPO relies on re-evaluating on stored draws.
    assert th.equal(zero, cfm_loss(lambda x, t: th.zeros_like(x), actions, times, noises))


def test_noise_weighting_is_the_error_of_the_noise_recovered_from_the_velocity():
    actions, times, noises = th.randn(4, 2), th.rand(4, 3), th.randn(4, 3, 2)

    def field(x, t):
        return th.sin(x) + t.unsqueeze(-1)

    x_t = interpolate(noises, actions.unsqueeze(1), times)
    recovered_noises = x_t - times.unsqueeze(-1) * field(x_t, times)
    noise_errors = (recovered_noises - noises).pow(2).mean(-1)
    losses = cfm_loss(field, actions, times, noises)
    assert th.allclose(cfm_loss_weights(times, "noise") * losses, noise_errors, atol=1e-6)
    assert cfm_loss_weights(times, "velocity") == 1.0
    with pytest.raises(ValueError, match="cfm_loss_weighting"):
        cfm_loss_weights(times, "eps")


def test_cfm_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="batch, n_draws"):
        cfm_loss(lambda x, t: x, th.zeros(4, 2), th.zeros(4), th.zeros(4, 3, 2))
    with pytest.raises(ValueError, match="disagree"):
        cfm_loss(lambda x, t: x, th.zeros(4, 2), th.zeros(4, 3), th.zeros(4, 3, 5))


def test_time_samplers():
    th.manual_seed(0)
    uniform = sample_times((10000,), "uniform")
    assert uniform.min() >= 0 and uniform.max() < 1 and abs(uniform.mean() - 0.5) < 0.02
    grid = sample_times((10000,), "grid", n_grid_points=4)
    assert set(grid.unique().tolist()) == {0.0, 0.25, 0.5, 0.75}
    beta = sample_times((10000,), "beta", beta_params=(1.5, 1.0))
    assert abs(beta.mean() - 1.5 / 2.5) < 0.02
    with pytest.raises(ValueError, match="uniform"):
        sample_times((3,), "gaussian")
    assert th.equal(time_grid(4), th.tensor([0.0, 0.25, 0.5, 0.75]))


def test_default_beta_times_favour_the_noise_end_as_pi0_does():
    # openpi draws Beta(1.5, 1) with t = 1 at the noise; here t = 0 is the noise: Beta(1, 1.5), mean 0.4.
    times = sample_times((20000,), "beta", generator=th.Generator().manual_seed(0))
    assert abs(times.mean().item() - 0.4) < 0.01
    assert (times < 0.5).float().mean() > 0.6


def test_beta_times_come_from_the_generator_alone():
    def draw(seed: int) -> th.Tensor:
        return sample_times((64, 8), "beta", beta_params=(1.5, 0.7), generator=th.Generator().manual_seed(seed))

    th.manual_seed(0)
    global_state = th.get_rng_state()
    first, again, other = draw(1), draw(1), draw(2)
    assert th.equal(first, again) and not th.equal(first, other)
    assert th.equal(th.get_rng_state(), global_state)  # the global random state was not used
    assert first.shape == (64, 8) and first.min() >= 0 and first.max() <= 1


@pytest.mark.parametrize("beta_params", [(1.0, 1.5), (0.3, 0.5), (5.0, 2.0)])
def test_beta_sampler_matches_torch_beta_distribution(beta_params):
    times = sample_times((20000,), "beta", beta_params=beta_params, generator=th.Generator().manual_seed(0))
    th.manual_seed(1)
    reference = th.distributions.Beta(*(th.tensor(p) for p in beta_params)).sample((20000,))
    quantiles = th.linspace(0.05, 0.95, 19)
    assert (times.quantile(quantiles) - reference.quantile(quantiles)).abs().max() < 0.02


@pytest.mark.parametrize("beta_params", [(0.0, 1.0), (1.0, float("nan")), (1.0,)])
def test_bad_beta_params_are_rejected(beta_params):
    with pytest.raises(ValueError, match="beta_params"):
        sample_times((3,), "beta", beta_params=beta_params)


@pytest.mark.parametrize("n_steps", [1, 3, 10])
@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_integrators_follow_the_field(n_steps, method):
    noise = th.randn(6, 2)
    constant = th.tensor([0.5, -1.0])
    out = integrate(lambda x, t: constant.expand_as(x), noise, n_steps, method=method)
    assert th.allclose(out.actions, noise + constant, atol=1e-6)
    # The exact transport field reaches its target from any noise (Euler's last step lands on it).
    target = th.randn(6, 2)
    out = integrate(exact_velocity(target), noise, n_steps, method="euler", return_chain=True)
    assert th.allclose(out.actions, target, atol=1e-5)
    assert out.chain.shape == (n_steps + 1, 6, 2) and th.equal(out.chain[0], noise)


def test_midpoint_is_more_accurate_than_euler_on_a_curved_field():
    # dx/dt = x has the solution x0 * e.
    noise = th.ones(1, 1)
    euler = integrate(lambda x, t: x, noise, 4, method="euler").actions
    midpoint = integrate(lambda x, t: x, noise, 4, method="midpoint").actions
    exact = th.exp(th.ones(1, 1))
    assert (midpoint - exact).abs() < (euler - exact).abs() / 5


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_noise_hook_log_probs_match_recomputation_from_the_chain(method):
    th.manual_seed(0)
    weight = th.randn(2, 2)

    def field(x, t):  # t broadcasts against x.shape[:-1], the velocity-field contract
        return x @ weight + t.unsqueeze(-1)

    def std_fn(x, t, k):
        return 0.1 + 0.05 * k + 0.0 * x

    out = integrate(field, th.randn(5, 2), 4, method=method, noise_std_fn=std_fn)
    assert out.chain.shape == (5, 5, 2) and out.step_log_probs.shape == (4, 5)
    # The re-evaluation batches all K steps into one call per evaluation; the numbers must not change.
    recomputed = chain_log_probs(field, out.chain, std_fn, method)
    assert th.equal(recomputed, out.step_log_probs)
    if method == "midpoint":
        return
    # The transitions are Gaussian around the deterministic step with the hook's std.
    k = 2
    mean = out.chain[k] + 0.25 * field(out.chain[k], th.tensor(0.5))
    assert th.allclose(out.step_log_probs[k], gaussian_log_prob(out.chain[k + 1], mean, th.tensor(0.2)), atol=1e-5)


def test_noise_hook_uses_supplied_step_noises():
    step_noises = th.randn(3, 4, 2)
    a = integrate(lambda x, t: -x, th.zeros(4, 2), 3, noise_std_fn=lambda x, t, k: th.tensor(0.3), step_noises=step_noises)
    b = integrate(lambda x, t: -x, th.zeros(4, 2), 3, noise_std_fn=lambda x, t, k: th.tensor(0.3), step_noises=step_noises)
    assert th.equal(a.chain, b.chain)
    with pytest.raises(ValueError, match="step_noises"):
        integrate(
            lambda x, t: x, th.zeros(4, 2), 3, noise_std_fn=lambda x, t, k: th.tensor(0.3), step_noises=th.zeros(2, 4, 2)
        )


def test_velocity_modifier_is_applied_at_every_step():
    noise = th.zeros(3, 2)
    out = integrate(lambda x, t: th.zeros_like(x), noise, 5, velocity_modifier=lambda x, t, v: v + 2.0)
    assert th.allclose(out.actions, th.full((3, 2), 2.0))


def test_gaussian_log_prob_matches_torch():
    x, mean, std = th.randn(4, 3), th.randn(4, 3), th.rand(4, 3) + 0.1
    expected = th.distributions.Normal(mean, std).log_prob(x).sum(-1)
    assert th.allclose(gaussian_log_prob(x, mean, std), expected, atol=1e-5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_non_positive_or_non_integer_steps_are_rejected(bad):
    with pytest.raises(ValueError, match="n_flow_steps must be a positive integer"):
        integrate(lambda x, t: x, th.zeros(1, 1), bad)


def test_chain_log_probs_keeps_the_chain_dtype_for_a_scalar_std():
    th.manual_seed(0)
    out = integrate(lambda x, t: -x, th.randn(3, 2), 4, noise_std_fn=lambda x, t, k: th.tensor(0.2))
    recomputed = chain_log_probs(lambda x, t: -x, out.chain, lambda x, t, k: th.tensor(0.2, dtype=th.float64))
    assert recomputed.dtype == th.float32 and recomputed.shape == (4, 3)
    assert th.allclose(recomputed, out.step_log_probs)
