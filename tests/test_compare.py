"""
``sb3-flow compare``: configs checked before any job starts, jobs that resume after a kill, failures that stay visible,
rliable's statistics reproduced exactly, and launchers that change nothing in the results.

Everything is tiny: a FlowBC base trained 50 steps on 2 scripted episodes, budgets of a few hundred steps, 2 fixed starts.
"""

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from sb3_flow import experiments
from sb3_flow.bc import FlowBC
from sb3_flow.cli import main
from sb3_flow.common.demonstrations import collect_demonstrations
from sb3_flow.common.experts import pendulum_swing_up
from sb3_flow.compare import ConfigError, LocalLauncher, RayLauncher, compare, load_config, report
from sb3_flow.compare.base import prepare_references
from sb3_flow.compare.config import as_config
from sb3_flow.compare.jobs import Job, error_path, result_path
from sb3_flow.compare.launchers import Progress
from sb3_flow.compare.stats import (
    iqm_and_mean,
    iqm_curves,
    normalization_references,
    normalize,
    performance_profile,
    probability_of_improvement,
    reference_gap,
)

REPS = 100  # bootstrap replications in the sweeps below: their statistics are not what those tests check
# FlowPPO small enough for a test: 2 envs x 64 steps per rollout, one epoch.
TINY_FLOW_PPO = {"algo": "flow_ppo", "n_envs": 2, "kwargs": {"n_steps": 64, "batch_size": 64, "n_epochs": 1}}


@pytest.fixture(scope="module")
def base_zip(tmp_path_factory):
    """A FlowBC base: 50 gradient steps on 2 episodes of the scripted Pendulum controller."""
    demos = collect_demonstrations("Pendulum-v1", pendulum_swing_up, n_episodes=2, action_noise=0.3, seed=0)
    path = tmp_path_factory.mktemp("base") / "flow_bc.zip"
    FlowBC("MlpPolicy", "Pendulum-v1", demos, seed=0, device="cpu").learn(50).save(path)
    return path


def tiny_config(base_zip, **changes):
    config = {
        "env": "Pendulum-v1",
        "base": {"zip": str(base_zip)},
        "expert_return": -150.0,
        "budget": 256,
        "seeds": [0],
        "eval_starts": 2,
        "eval_every": 128,
        "methods": {"flow_ppo": TINY_FLOW_PPO},
    }
    config.update(changes)
    return config


def no_job_started(out_dir: Path) -> bool:
    return not (out_dir / "jobs").exists() and not (out_dir / "base").exists()


# ----- configs: clear errors before any job starts -----


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"methods": {"mine": {"algo": "not_an_algo"}}}, ConfigError, "methods.mine.algo: unknown algorithm 'not_an_algo'"),
        ({"base": {"zip": "missing/flow_bc.zip"}}, FileNotFoundError, "base.zip: No saved FlowBC model or FlowPolicy at"),
        ({"budget": 0}, ConfigError, "budget must be a positive integer, got 0"),
        ({"budget": -5}, ConfigError, "budget must be a positive integer, got -5"),
        ({"seeds": []}, ConfigError, "seeds: expected a non-empty list"),
        ({"eval_every": 0}, ConfigError, "eval_every must be a positive integer"),
        ({"eval_every": 1000}, ConfigError, "eval_every: must be at most the budget (256 env steps)"),
        ({"methods": {"sac": {"algo": "sac", "from_base": True}}}, ConfigError, "methods.sac.from_base: sac takes no"),
        ({"methods": {"f": {**TINY_FLOW_PPO, "kwargs": {"n_stepz": 3}}}}, ConfigError, "takes no arguments ['n_stepz']"),
        ({"methods": {"f": {"algo": "flow_ppo", "preset": "NOPE"}}}, ConfigError, "methods.f.preset: preset 'NOPE'"),
        ({"env": "NoSuchEnv-v0"}, ConfigError, "env: 'NoSuchEnv-v0' is not a registered gymnasium environment id"),
        ({"env": 3}, ConfigError, "env: expected a gymnasium environment id"),
        ({"eval_envs": 0}, ConfigError, "eval_envs must be a positive integer, got 0"),
    ],
)
def test_bad_config_fails_before_any_job(base_zip, tmp_path, changes, error, message):
    out_dir = tmp_path / "out"
    with pytest.raises(error) as raised:
        compare(tiny_config(base_zip, **changes), out_dir, workers=1)
    assert message in str(raised.value)
    assert no_job_started(out_dir)


def test_steering_method_needs_a_base(tmp_path):
    config = {"env": "Pendulum-v1", "budget": 100, "seeds": [0], "eval_every": 100, "methods": {"d": {"algo": "sac_dsrl"}}}
    with pytest.raises(ConfigError, match=r"methods\.d\.from_base: sac_dsrl steers the base"):
        as_config(config)


def test_yaml_config_reads_presets_and_paths_relative_to_it(base_zip, tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "flow_bc.zip").write_bytes(base_zip.read_bytes())
    config = tiny_config("flow_bc.zip")  # relative: read from the config's folder
    config["methods"] = {"fpo": {"algo": "flow_ppo", "preset": "FLOW_PPO_PENDULUM_FINETUNE", "kwargs": {"n_epochs": 2}}}
    (folder / "c.yml").write_text(yaml.safe_dump(config))
    loaded = load_config(folder / "c.yml")
    assert loaded.base.path == str((folder / "flow_bc.zip").resolve())
    fpo = loaded.methods["fpo"]
    assert fpo.from_base  # a fine-tuner starts from the base unless told otherwise
    assert fpo.resolved_kwargs()["n_epochs"] == 2 and fpo.resolved_kwargs()["clip_range"] == 0.02  # kwargs over the preset


def test_the_example_config_loads():
    config = load_config(Path(__file__).resolve().parent.parent / "compare_configs" / "pendulum.yml")
    assert list(config.methods) == ["flow_ppo", "reinflow", "sac_dsrl", "sac_residual", "dsrl_na", "sac", "ppo"]
    assert [config.methods[name].from_base for name in config.methods] == [True] * 5 + [False] * 2
    assert (config.budget, config.seeds, config.eval_starts, config.eval_every) == (10_000, (0, 1, 2, 3, 4), 50, 2_000)


def test_the_hopper_config_loads_with_the_named_pipeline():
    pytest.importorskip("mujoco")
    config = load_config(Path(__file__).resolve().parent.parent / "compare_configs" / "hopper.yml")
    assert config.env_id == "Hopper-v5" and config.base.pipeline == experiments.HOPPER_PIPELINE
    assert config.base.bc_kwargs == {"n_flow_steps": 4} and config.expert == "pipeline"
    reinflow = config.methods["reinflow"].resolved_kwargs()
    assert reinflow["learning_rate"] == 1e-4 and reinflow["critic_learning_rate"] == 6.5e-4  # kwargs over the Hopper preset
    pendulum = {"env": "Pendulum-v1", "budget": 10, "seeds": [0], "eval_every": 10, "methods": {"s": {"algo": "sac"}}}
    with pytest.raises(ConfigError, match="the 'hopper' pipeline is for Hopper-v5, not env Pendulum-v1"):
        as_config({**pendulum, "base": {"pipeline": "hopper"}})


def test_the_cube_config_loads(tmp_path):
    """compare_configs/cube_single.yml: its OGBench env, methods, presets and kwargs pass the checks (its dataset is
    made by benchmarks/compare_cube.py; here an empty stand-in at the same relative path)."""
    pytest.importorskip("ogbench")
    source = Path(__file__).resolve().parent.parent / "compare_configs" / "cube_single.yml"
    folder = tmp_path / "compare_configs"
    folder.mkdir()
    (folder / "cube_single.yml").write_text(source.read_text())
    dataset = (folder / yaml.safe_load(source.read_text())["base"]["dataset"]).resolve()
    dataset.parent.mkdir(parents=True)
    dataset.write_bytes(b"")
    config = load_config(folder / "cube_single.yml")
    assert config.env_id == "cube-single-singletask-task2-v0" and config.base.kind == "dataset"
    assert [name for name, spec in config.methods.items() if not spec.from_base] == ["sac", "ppo"]
    assert len(config.methods) == 7 and config.eval_envs == 10
    assert config.methods["flow_ppo"].resolved_kwargs()["gamma"] == 0.99  # over the Pendulum preset's 0.9


def test_cli_reports_a_bad_config_in_one_line(base_zip, tmp_path, capsys):
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(tiny_config(base_zip, budget=0)))
    assert main(["compare", str(path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.strip() == "sb3-flow compare: error: budget must be a positive integer, got 0"
    assert main(["compare-report", str(tmp_path / "nothing")]) == 2
    assert "holds no comparison" in capsys.readouterr().err


# ----- jobs: resume after a kill, failures kept -----


def test_resume_after_kill_skips_finished_jobs(base_zip, tmp_path):
    config_path, out_dir = tmp_path / "c.yml", tmp_path / "out"
    config_path.write_text(yaml.safe_dump(tiny_config(base_zip, seeds=[0, 1, 2])))
    # (3 jobs of ~2 s: the kill lands in the second one, after the first one's file appears)
    script = f"from sb3_flow.compare import compare; compare({str(config_path)!r}, {str(out_dir)!r}, workers=1, reps=10)"
    sweep = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = result_path(out_dir, Job("flow_ppo", 0))
    try:
        deadline = time.monotonic() + 120
        while not first.exists():
            assert sweep.poll() is None, f"the sweep ended before its first job finished: {sweep.stderr.read().decode()}"
            assert time.monotonic() < deadline, "the first job did not finish in 120 s"
            time.sleep(0.02)
    finally:
        sweep.kill()  # mid-way: the second job is running
        sweep.wait()
    finished = sorted(path.name for path in first.parent.glob("seed_*.json"))
    assert len(finished) < 3, "the sweep finished before it was killed; nothing was left to resume"
    before = {name: ((first.parent / name).stat().st_mtime_ns, (first.parent / name).read_bytes()) for name in finished}

    lines = []
    compare(config_path, out_dir, workers=1, reps=REPS, log=lines.append)
    assert f"{len(finished)} of 3 jobs finished before; running {3 - len(finished)} (LocalLauncher)" in lines
    for name, (mtime, content) in before.items():
        assert (first.parent / name).stat().st_mtime_ns == mtime and (first.parent / name).read_bytes() == content
    for seed in (0, 1, 2):
        record = json.loads(result_path(out_dir, Job("flow_ppo", seed)).read_text())
        assert record["status"] == "ok" and [step for step, _ in record["curve"]] == [0, 128, 256]
        assert len(record["final_returns"]) == 2 and record["versions"]["sb3_flow"] and record["steps_per_second"] > 0


def test_changed_settings_rerun_the_job(base_zip, tmp_path):
    out_dir = tmp_path / "out"
    compare(tiny_config(base_zip), out_dir, workers=1, reps=REPS, log=lambda line: None)
    path = result_path(out_dir, Job("flow_ppo", 0))
    hash_before = json.loads(path.read_text())["settings_hash"]
    changed = tiny_config(
        base_zip, methods={"flow_ppo": {**TINY_FLOW_PPO, "kwargs": {**TINY_FLOW_PPO["kwargs"], "n_epochs": 2}}}
    )
    lines = []
    compare(changed, out_dir, workers=1, reps=REPS, log=lines.append)
    assert "0 of 1 jobs finished before; running 1 (LocalLauncher)" in lines
    assert json.loads(path.read_text())["settings_hash"] != hash_before


def test_failing_method_does_not_stop_the_others(base_zip, tmp_path, capsys):
    config_path, out_dir = tmp_path / "c.yml", tmp_path / "out"
    # PPO refuses a minibatch of 1 inside its own constructor: an error of the algorithm, not of the config.
    broken = {"algo": "ppo", "kwargs": {"batch_size": 1, "n_steps": 64}}
    config_path.write_text(yaml.safe_dump(tiny_config(base_zip, methods={"broken": broken, "flow_ppo": TINY_FLOW_PPO})))
    command = ["compare", str(config_path), "--out", str(out_dir), "--workers", "1", "--reps", str(REPS)]
    assert main(command) == 1  # the sweep went on, and says a job failed

    error = json.loads(error_path(out_dir, Job("broken", 0)).read_text())
    assert error["status"] == "error" and "Traceback (most recent call last)" in error["traceback"]
    assert "batch_size" in error["traceback"] and "AssertionError" in error["error"]
    assert not result_path(out_dir, Job("broken", 0)).exists()
    assert json.loads(result_path(out_dir, Job("flow_ppo", 0)).read_text())["status"] == "ok"
    printed = capsys.readouterr().out
    assert "[1/2 done, 1 running, 1 failed] broken seed 0: FAILED: AssertionError" in printed
    assert "| broken | - | - | - | - | - | 0 (1 failed) | - |" in printed and "broken seed 0 failed: see" in printed

    assert main(command) == 1  # the failed job runs again, the finished one does not
    assert "1 of 2 jobs finished before; running 1 (LocalLauncher)" in capsys.readouterr().out


def test_a_killed_worker_costs_no_other_job(base_zip, tmp_path):
    """A worker killed mid-sweep (as by the OOM killer) breaks the process pool under every job in it: those run
    again in new workers, and every job ends with its result, none recorded as failed."""
    import multiprocessing
    import os
    import signal
    import threading

    out_dir, lines = tmp_path / "out", []
    config = tiny_config(base_zip, seeds=[0, 1, 2, 3])
    sweep = threading.Thread(target=lambda: compare(config, out_dir, workers=2, reps=10, log=lines.append))
    sweep.start()
    first = result_path(out_dir, Job("flow_ppo", 0))
    deadline = time.monotonic() + 120
    while not first.exists() and not any(result_path(out_dir, Job("flow_ppo", s)).exists() for s in (1, 2, 3)):
        assert sweep.is_alive() and time.monotonic() < deadline, f"no job finished: {lines}"
        time.sleep(0.02)
    workers = multiprocessing.active_children()
    assert workers, "no worker process to kill"
    os.kill(workers[0].pid, signal.SIGKILL)  # 3 jobs left for 2 workers: it was running one
    sweep.join(timeout=300)
    assert not sweep.is_alive()
    assert any(line.startswith("a worker process died: running") for line in lines), lines
    for seed in range(4):
        assert json.loads(result_path(out_dir, Job("flow_ppo", seed)).read_text())["status"] == "ok"
        assert not error_path(out_dir, Job("flow_ppo", seed)).exists()
    assert not any("failed]" in line and " 0 failed]" not in line for line in lines), lines


def test_report_normalizes_between_base_and_expert(base_zip, tmp_path):
    out_dir = tmp_path / "out"
    result = compare(tiny_config(base_zip, seeds=[0, 1]), out_dir, workers=1, reps=REPS, log=lambda line: None)
    references = json.loads((out_dir / "base" / "references.json").read_text())["references"]
    finals = [json.loads(result_path(out_dir, Job("flow_ppo", seed)).read_text())["final_return"] for seed in (0, 1)]
    expected = (np.array(finals) - references["base_return"]) / (-150.0 - references["base_return"])
    summary = result.summary["methods"]["flow_ppo"]
    assert summary["iqm"][0] == pytest.approx(expected.mean())  # two runs: the IQM keeps both
    assert summary["final_returns"] == finals
    curves = [json.loads(result_path(out_dir, Job("flow_ppo", seed)).read_text())["curve"] for seed in (0, 1)]
    lowest = [min(value for _, value in curve) for curve in curves]
    assert summary["lowest_checkpoint_returns"] == lowest
    row = next(line for line in result.markdown.splitlines() if line.startswith("| flow_ppo |")).split(" | ")
    assert row[4] == f"{expected[0]:.2f}, {expected[1]:.2f}"  # each seed's normalized final score
    assert row[5] == f"{np.mean(lowest):.1f}"
    for name in ("report.md", "summary.json", "curves.png", "aggregates.png", "profile.png"):
        assert (out_dir / "report" / name).stat().st_size > 0
    assert report(out_dir, reps=REPS).markdown == result.markdown  # the same files and seed: the same report
    # an expert that is no better than the base on these starts: raw returns, and the report says why
    sweep = json.loads((out_dir / "sweep.json").read_text())
    base_returns = [-160.0, -150.0, -140.0, -155.0]
    sweep["references"].update(
        base_returns=base_returns,
        expert_returns=(np.array(base_returns) + np.array([3.0, -2.0, 1.0, -1.0])).tolist(),
        base_return=-151.25,
        expert_return=-151.0,
    )
    (out_dir / "sweep.json").write_text(json.dumps(sweep))
    raw = report(out_dir, reps=REPS)
    assert raw.summary["normalized"] is False
    assert raw.summary["methods"]["flow_ppo"]["iqm"][0] == pytest.approx(np.mean(finals))
    assert "within 2 standard errors" in raw.markdown


# ----- launchers -----


def test_ray_and_local_launchers_give_identical_curves(base_zip, tmp_path):
    pytest.importorskip("ray")
    config = as_config(tiny_config(base_zip))
    curves = {}
    for name, launcher in (("local", LocalLauncher(workers=1)), ("ray", RayLauncher(num_cpus=1))):
        out_dir = tmp_path / name
        prepare_references(config, out_dir, log=lambda line: None)
        launcher.run(config, [Job("flow_ppo", 0)], out_dir, Progress(1, log=lambda line: None))
        record = json.loads(result_path(out_dir, Job("flow_ppo", 0)).read_text())
        curves[name] = (record["curve"], record["final_returns"], record["settings_hash"])
    assert curves["ray"] == curves["local"]
    # and the seed matters: another seed gives another curve, so equality above is not vacuous
    other = replace(config, seeds=(1,))
    prepare_references(other, tmp_path / "other", log=lambda line: None)
    LocalLauncher(workers=1).run(other, [Job("flow_ppo", 1)], tmp_path / "other", Progress(1, log=lambda line: None))
    assert json.loads(result_path(tmp_path / "other", Job("flow_ppo", 1)).read_text())["curve"] != curves["local"][0]


# ----- statistics: rliable's own numbers -----

SCORES = {
    "a": np.array([[0.1], [0.2], [0.3], [0.4], [0.5], [0.6], [0.7], [10.0]]),  # one outlier seed
    "b": np.array([[0.0], [0.1], [0.1], [0.2], [0.3], [0.2], [0.4], [0.5]]),
}


def test_iqm_of_a_known_table():
    estimates = iqm_and_mean(SCORES, reps=500, seed=3)
    # 8 runs: the IQM drops the 2 lowest and the 2 highest, so the outlier does not move it
    assert estimates["a"]["iqm"][0] == pytest.approx((0.3 + 0.4 + 0.5 + 0.6) / 4)
    assert estimates["a"]["mean"][0] == pytest.approx((2.8 + 10.0) / 8)
    lower, upper = estimates["a"]["iqm"][1:]
    assert lower <= estimates["a"]["iqm"][0] <= upper


@pytest.mark.filterwarnings("ignore:random_state is deprecated:FutureWarning")  # arch 7, called by rliable
def test_statistics_equal_rliables_own():
    from rliable import library as rly
    from rliable import metrics

    def rliable(scores, func):
        np.random.seed(3)  # rliable resamples with numpy's global generator
        return rly.get_interval_estimates(scores, func, reps=500, random_state=np.random.RandomState(3))

    estimates = iqm_and_mean(SCORES, reps=500, seed=3)
    for name, values in SCORES.items():
        for metric, func in (("iqm", metrics.aggregate_iqm), ("mean", metrics.aggregate_mean)):
            points, intervals = rliable({name: values}, lambda x, func=func: np.array([func(x)]))
            assert estimates[name][metric] == pytest.approx((points[name][0], *intervals[name][:, 0]))

    improvement = probability_of_improvement(SCORES, [("a", "b")], reps=500, seed=3)
    points, intervals = rliable({"a,b": [SCORES["a"], SCORES["b"]]}, metrics.probability_of_improvement)
    assert improvement[("a", "b")] == pytest.approx((points["a,b"], *np.ravel(intervals["a,b"])))
    assert improvement[("a", "b")][0] == pytest.approx(metrics.probability_of_improvement(SCORES["a"], SCORES["b"]))

    taus = np.linspace(0.0, 1.0, 11)
    profiles, bands = performance_profile(SCORES, taus, reps=500, seed=3)
    for name in SCORES:
        np.random.seed(3)
        own_profiles, own_bands = rly.create_performance_profile({name: SCORES[name]}, taus, reps=500)
        np.testing.assert_allclose(profiles[name], own_profiles[name])
        np.testing.assert_allclose(bands[name], own_bands[name])
    np.testing.assert_allclose(profiles["b"][[0, 5, 10]], [7 / 8, 0.0, 0.0])  # runs above 0, 0.5 and 1

    curves = {"a": np.stack([SCORES["a"], 2 * SCORES["a"]], axis=-1)}  # (runs, tasks, points)
    iqm, lower, upper = iqm_curves(curves, reps=500, seed=3)["a"]
    np.testing.assert_allclose(iqm, [0.45, 0.9])
    _, own = rliable(curves, lambda x: np.array([metrics.aggregate_iqm(x[..., point]) for point in range(2)]))
    np.testing.assert_allclose(np.stack([lower, upper]), own["a"])


def test_statistics_are_reproducible_and_normalization_is_base_to_expert():
    state = np.random.get_state()
    first = iqm_and_mean(SCORES, reps=200, seed=5)
    np.random.random()  # whatever the caller's generator did in between
    assert iqm_and_mean(SCORES, reps=200, seed=5) == first
    assert iqm_and_mean(SCORES, reps=200, seed=6) != first
    np.random.set_state(state)
    expected = np.random.random()
    np.random.set_state(state)
    iqm_and_mean(SCORES, reps=200, seed=5)
    assert np.random.random() == expected  # the caller's global generator is left as it was
    np.testing.assert_allclose(normalize([-1000.0, -600.0, -200.0], base_return=-1000.0, expert_return=-200.0), [0, 0.5, 1])
    np.testing.assert_allclose(normalize([-600.0], base_return=None, expert_return=-200.0), [-600.0])  # raw


def test_normalization_needs_an_expert_apart_from_the_base():
    base = [-200.0, -150.0, -100.0, -180.0]
    apart = {
        "base_return": np.mean(base),
        "expert_return": np.mean(base) + 10,
        "base_returns": base,
        "expert_returns": (np.array(base) + np.array([9.0, 11.0, 10.0, 10.0])).tolist(),
    }
    assert normalization_references(apart)[:2] == (apart["base_return"], apart["expert_return"])
    close = {**apart, "expert_returns": (np.array(base) + np.array([19.0, -21.0, 30.0, -8.0])).tolist()}
    close["expert_return"] = float(np.mean(close["expert_returns"]))  # 5 above the base, standard error 11.4
    assert reference_gap(close["base_returns"], close["expert_returns"]) == pytest.approx(
        (5.0, np.std([19, -21, 30, -8], ddof=1) / 2)
    )
    assert normalization_references(close)[:2] == (None, None)
    # a number given for the expert (no per-start returns): it is taken as it is
    assert normalization_references({"base_return": -150.0, "expert_return": -149.0})[:2] == (-150.0, -149.0)
    assert normalization_references({"base_return": -150.0, "expert_return": None})[:2] == (None, None)


def test_normalized_plots_cut_far_below_base_baselines():
    from sb3_flow.compare.reporting import SCORE_FLOOR, score_axis_limits

    assert score_axis_limits(True, -0.5, 0.8) is None  # everything in view: matplotlib's own range
    assert score_axis_limits(False, -1500.0, -140.0) is None  # raw returns are never cut
    low, high = score_axis_limits(True, -100.0, 0.7)  # PPO from scratch at -100 beside methods near the base
    assert low == SCORE_FLOOR and 1.0 < high < 1.5  # the base (0) and the expert (1) both in view
    assert score_axis_limits(True, -3.0, 2.0)[1] > 2.0  # a method past the expert stays in view
