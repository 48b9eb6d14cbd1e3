"""The sb3-flow command line: collect -> pretrain -> evaluate, the demo, and its error messages."""

import json

import numpy as np
import pytest
from stable_baselines3 import SAC

from sb3_flow.cli import main
from sb3_flow.common.demonstrations import Demonstrations
from sb3_flow.common.experts import expert_cache_path, train_expert
from sb3_flow.registry import load_any


def test_collect_pretrain_evaluate(tmp_path, capsys):
    demos_path = tmp_path / "demos.npz"
    assert main(["collect", "--expert", "scripted", "--episodes", "3", "--action-noise", "0.2", "--out", str(demos_path)]) == 0
    demos = Demonstrations.load(demos_path)
    assert demos.n_episodes == 3 and demos.actions.shape == (600, 1)
    assert "3 episodes" in capsys.readouterr().out

    model_path = tmp_path / "flow_bc.zip"
    assert (
        main(["pretrain", "--demos", str(demos_path), "--steps", "20", "--n-flow-steps", "3", "--out", str(model_path)]) == 0
    )
    loaded, name = load_any(model_path)
    assert name == "flow_bc" and loaded.policy.n_flow_steps == 3

    assert main(["evaluate", str(model_path), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "(flow_bc)" in out and "2 episodes" in out

    policy_path = tmp_path / "policy.pt"
    loaded.policy.save(str(policy_path))
    assert main(["evaluate", str(policy_path), "--episodes", "1"]) == 0
    assert "(FlowPolicy)" in capsys.readouterr().out


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["pretrain", "--demos", str(tmp_path / "missing.npz")]) == 2
    assert "No demonstrations file" in capsys.readouterr().err
    (tmp_path / "junk.zip").write_bytes(b"junk")
    assert main(["evaluate", str(tmp_path / "junk.zip")]) == 2
    assert "neither a saved model" in capsys.readouterr().err
    assert (
        main(["collect", "--expert", "scripted", "--env", "MountainCarContinuous-v0", "--out", str(tmp_path / "x.npz")]) == 2
    )
    assert "only controls Pendulum-v1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--demos", "x.npz", "--algo", "unknown"])


def test_trained_expert_is_cached_and_reused(tmp_path):
    model = train_expert("Pendulum-v1", "sac", total_timesteps=150, seed=1, cache_dir=tmp_path)
    path = expert_cache_path("Pendulum-v1", "sac", 150, 1, tmp_path)
    assert path.is_file()
    again = train_expert("Pendulum-v1", "sac", total_timesteps=150, seed=1, cache_dir=tmp_path)
    obs = np.zeros((2, 3), dtype=np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], again.predict(obs, deterministic=True)[0])
    assert isinstance(again, SAC) and again.num_timesteps == 150  # loaded, not retrained
    _loaded, name = load_any(path)
    assert name == "sac"


def test_demo_prints_the_table_and_writes_results_and_plot(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--expert",
            "scripted",
            "--episodes",
            "3",
            "--bc-steps",
            "30",
            "--finetune-steps",
            "256",
            "--steering-steps",
            "120",
            "--eval-episodes",
            "2",
            "--out-dir",
            str(out_dir),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    rows = ["expert", "demonstrations", "Gaussian BC", "Flow BC", "FlowPPO fine-tune", "ReinFlow fine-tune"]
    rows += ["DSRL (SAC)", "DSRL-NA", "Residual SAC"]
    for row in rows:
        assert row in printed
    results = json.loads((out_dir / "results.json").read_text())
    assert [row["name"] for row in results["rows"]] == rows
    assert results["config"]["finetune_steps"] == 256 and results["config"]["bc_steps"] == 30
    assert all(np.isfinite(row["mean_return"]) for row in results["rows"])
    assert (out_dir / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Demonstrations.load(out_dir / "demos.npz").n_episodes == 3


def test_demo_rows_are_the_same_with_worker_processes(tmp_path):
    from sb3_flow.demo import DemoConfig, run_demo

    def rows(n_workers: int) -> list:
        config = DemoConfig(
            expert="scripted", n_episodes=2, bc_steps=20, finetune_steps=256, steering_steps=0, n_eval_episodes=2,
            n_workers=n_workers, out_dir=str(tmp_path / f"w{n_workers}"),
        )  # fmt: skip
        return [(row.name, row.mean_return) for row in run_demo(config, progress_bar=False, log=lambda _: None).rows]

    sequential, parallel = rows(1), rows(2)
    assert [name for name, _ in parallel][-2:] == ["FlowPPO fine-tune", "ReinFlow fine-tune"]
    assert parallel == sequential  # the workers load the saved Flow BC base: same weights, same seeds, same rows
    with pytest.raises(ValueError, match="n_workers"):
        run_demo(DemoConfig(expert="scripted", n_workers=0, out_dir=str(tmp_path / "bad")))
