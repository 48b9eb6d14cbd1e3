"""sb3-flow demo: the modes panel, a tiny end-to-end run through the comparison, and bad settings."""

import json
import re
import sys
from dataclasses import replace

import numpy as np
import pytest

from sb3_flow.cli import main
from sb3_flow.common.toy import BimodalEnv, bimodal_demonstrations
from sb3_flow.demo import DemoConfig, check_demo_config, modes_panel, run_demo


def test_flow_bc_keeps_both_modes_where_gaussian_bc_averages_them_in_the_demo_panel():
    modes = modes_panel(steps=1000, seed=0)
    assert np.all(np.abs(modes.demonstrations) == pytest.approx(0.8))
    flow, gaussian = modes.fractions(modes.flow_samples), modes.fractions(modes.gaussian_samples)
    # Flow BC: both signs carry substantial mass, and almost none lies at the mean no demonstrator took.
    assert flow["near_plus"] >= 0.35 and flow["near_minus"] >= 0.35, flow
    assert flow["near_zero"] < 0.10, flow
    # Gaussian BC: its action is the mean of the modes, and its samples pile up there rather than at either mode.
    assert abs(modes.gaussian_mean) < 0.15, modes.gaussian_mean
    assert gaussian["near_zero"] > max(gaussian["near_plus"], gaussian["near_minus"]), gaussian
    assert gaussian["near_zero"] > flow["near_zero"] + 0.15, (gaussian, flow)


def test_bimodal_env_is_reproducible_and_rewards_either_mode():
    env = BimodalEnv()
    first, _ = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(first, again)
    assert env.step(np.array([0.8]))[1] == 1.0 and env.step(np.array([-0.8]))[1] == 1.0
    assert env.step(np.array([0.0]))[1] == 0.0  # the mean of the modes earns nothing
    demos = bimodal_demonstrations(200, seed=0)
    assert demos.n_episodes == 10 and 0.3 < np.mean(demos.actions > 0) < 0.7


TINY_DEMO = [
    "demo", "--expert", "scripted", "--episodes", "2", "--bc-steps", "30", "--modes-steps", "100", "--budget", "150",
    "--eval-every", "75", "--seeds", "0", "1", "--eval-starts", "3", "--workers", "1", "--reps", "100",
]  # fmt: skip


def test_tiny_demo_writes_normalized_scores_with_intervals_and_the_figure(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert main([*TINY_DEMO, "--out-dir", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    for text in ("normalized score [95% CI]", "expert", "Flow BC base", "DSRL", "Residual SAC", "Flow BC samples:"):
        assert text in printed

    results = json.loads((out_dir / "results.json").read_text())
    assert results["normalized"] and results["config"]["seeds"] == [0, 1] and results["config"]["budget"] == 150
    base, expert = results["references"]["base_return"], results["references"]["expert_return"]
    assert np.isfinite(base) and np.isfinite(expert) and expert > base  # the scripted expert beats a 30-step base
    rows = {row["name"]: row for row in results["rows"]}
    assert list(rows) == ["expert", "Flow BC base", "DSRL", "Residual SAC"]
    assert rows["expert"]["score"] == 1.0 and rows["Flow BC base"]["score"] == 0.0
    assert rows["expert"]["mean_return"] == pytest.approx(expert) and rows["Flow BC base"]["mean_return"] == base
    for name, label in (("dsrl", "DSRL"), ("residual_sac", "Residual SAC")):
        method, row = results["methods"][name], rows[label]
        # every seed's final return, normalized between the base and the expert on the same starts
        expected = (np.array(method["final_returns"]) - base) / (expert - base)
        np.testing.assert_allclose(method["final_scores"], expected)
        assert method["seeds"] == [0, 1] and row["mean_return"] == pytest.approx(np.mean(method["final_returns"]))
        assert np.isfinite([row["score_low"], row["score_high"]]).all()
        assert row["score_low"] <= row["score"] <= row["score_high"]
        assert min(expected) <= row["score"] <= max(expected)
        curve = results["curves"][name]
        assert curve["steps"] == [0, 75, 150] and curve["iqm"][-1] == pytest.approx(row["score"])
        # Both steering agents start exactly at the base (zero-initialized actor), scored on the base's own starts.
        assert curve["iqm"][0] == pytest.approx(0.0, abs=1e-6)
    assert results["modes"]["flow_bc"]["near_zero"] >= 0 and set(results["seconds"]) >= {"expert", "compare", "total"}
    assert (out_dir / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out_dir / "compare" / "report" / "report.md").is_file() and (out_dir / "flow_bc.zip").is_file()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seeds": ()}, "seeds must name at least one seed"),
        ({"seeds": (0, 0)}, "seeds must name each seed once"),
        ({"seeds": (-1,)}, "seeds must be an integer >= 0"),
        ({"budget": -5}, "budget must be a positive integer, got -5"),
        ({"budget": 100, "eval_every": 500}, "eval_every must be at most the budget"),
        ({"modes_steps": 0}, "modes_steps must be a positive integer"),
        ({"n_workers": 0}, "n_workers must be a positive integer"),
        ({"methods": ()}, "methods must name at least one"),
        ({"methods": ("dsrl", "nope")}, "methods: unknown ['nope']"),
        ({"expert": "scripted", "env_id": "MountainCarContinuous-v0"}, "only controls Pendulum-v1"),
    ],
)
def test_bad_settings_fail_before_anything_runs(tmp_path, changes, message):
    out_dir = tmp_path / "demo"
    config = replace(DemoConfig(expert="scripted", out_dir=str(out_dir)), **changes)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_demo(config, progress_bar=False, log=lambda _: None)
    assert not out_dir.exists()  # checked before any folder, expert or model


def test_missing_expert_file_and_missing_rliable_are_named(tmp_path, monkeypatch, capsys):
    with pytest.raises(FileNotFoundError):
        check_demo_config(DemoConfig(expert=str(tmp_path / "no_expert.zip")))
    monkeypatch.setitem(sys.modules, "rliable", None)  # as on a plain install, without the [compare] extra
    with pytest.raises(ImportError, match=r"pip install 'sb3-flow\[compare\]'"):
        check_demo_config(DemoConfig())
    assert main([*TINY_DEMO, "--out-dir", str(tmp_path / "demo")]) == 2
    printed = capsys.readouterr()
    assert "pip install 'sb3-flow[compare]'" in printed.err and "expert" not in printed.out
    assert not (tmp_path / "demo" / "demos.npz").exists()
