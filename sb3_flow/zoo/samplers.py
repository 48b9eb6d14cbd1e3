"""Optuna samplers for sb3-flow's algorithms, in the RL-Zoo's (sampler, converter) form."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

NET_ARCHS = {"small": ([64, 64], [64, 64]), "medium": ([256, 256], [256, 256]), "large": ([256, 256, 256], [256, 256])}
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


def _sample_ppo_params(trial: Any, clip_low: float, epochs: list[int], clip_high: float = 0.2) -> dict[str, Any]:
    """The PPO and architecture part of the on-policy flow algorithms' search spaces."""
    return {
        "batch_size_pow": trial.suggest_int("batch_size_pow", 5, 9),
        "n_steps_pow": trial.suggest_int("n_steps_pow", 6, 11),
        "one_minus_gamma": trial.suggest_float("one_minus_gamma", 0.001, 0.1, log=True),
        "one_minus_gae_lambda": trial.suggest_float("one_minus_gae_lambda", 0.001, 0.1, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "clip_range": trial.suggest_float("clip_range", clip_low, clip_high, log=True),
        "n_epochs": trial.suggest_categorical("n_epochs", epochs),
        "net_arch": trial.suggest_categorical("net_arch", list(NET_ARCHS)),
        "activation_fn": trial.suggest_categorical("activation_fn", list(ACTIVATIONS)),
    }


def sample_flow_ppo_params(trial: Any, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Search space of FlowPPO: PPO's, plus FPO's number of (t, noise) draws, ratio mode, CFM-loss weighting, flow steps
    and a clip range from fine-tuning's 0.01 to 0.3 (FPO's default is 0.05; per-draw ratios from scratch on Hopper
    learned fastest with 0.2, see docs/benchmarks.md).

    :param trial: Optuna trial
    :param n_actions: action dimension (unused)
    :param n_envs: number of environments (unused)
    :param additional_args: Zoo extras (unused)
    :return: FlowPPO keyword arguments
    """
    sampled = {
        **_sample_ppo_params(trial, clip_low=0.01, epochs=[5, 10, 20], clip_high=0.3),
        "n_mc_samples": trial.suggest_categorical("n_mc_samples", [4, 8, 16]),
        "ratio_mode": trial.suggest_categorical("ratio_mode", ["per_action", "per_sample"]),
        "cfm_loss_weighting": trial.suggest_categorical("cfm_loss_weighting", ["velocity", "noise"]),
        "n_flow_steps": trial.suggest_categorical("n_flow_steps", [4, 10]),
    }
    # The Zoo's samplers return converted values; the converter is also used alone to reload a stored trial.
    return convert_flow_ppo_params(sampled)


def convert_flow_ppo_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """Sampled values -> FlowPPO keyword arguments."""
    hyperparams = dict(sampled_params)
    hyperparams["gamma"] = 1 - hyperparams.pop("one_minus_gamma")
    hyperparams["gae_lambda"] = 1 - hyperparams.pop("one_minus_gae_lambda")
    for name in ("batch_size", "n_steps"):
        if f"{name}_pow" in hyperparams:
            hyperparams[name] = 2 ** hyperparams.pop(f"{name}_pow")
    actor_arch, value_arch = NET_ARCHS[hyperparams.pop("net_arch")]
    hyperparams["policy_kwargs"] = {
        "net_arch": actor_arch,
        "value_net_arch": value_arch,
        "activation_fn": ACTIVATIONS[hyperparams.pop("activation_fn")],
    }
    return hyperparams


def sample_reinflow_params(trial: Any, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Search space of ReinFlow: PPO's, plus the noise bounds, the entropy coefficient, the flow steps and a small clip
    range (the authors fine-tune with 0.01 on the normalized chain log-probability).

    :param trial: Optuna trial
    :param n_actions: action dimension (unused)
    :param n_envs: number of environments (unused)
    :param additional_args: Zoo extras (unused)
    :return: ReinFlow keyword arguments
    """
    sampled = {
        **_sample_ppo_params(trial, clip_low=0.005, epochs=[5, 10]),
        "ent_coef": trial.suggest_float("ent_coef", 1e-4, 0.1, log=True),
        "min_std": trial.suggest_float("min_std", 0.02, 0.1, log=True),
        "max_std_over_min": trial.suggest_float("max_std_over_min", 1.5, 5.0),
        "n_flow_steps": trial.suggest_categorical("n_flow_steps", [1, 2, 4, 8]),
    }
    return convert_reinflow_params(sampled)


def convert_reinflow_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """Sampled values -> ReinFlow keyword arguments."""
    hyperparams = dict(sampled_params)
    max_std_over_min = hyperparams.pop("max_std_over_min")
    hyperparams = convert_flow_ppo_params(hyperparams)  # the PPO and architecture parts are shared
    hyperparams["max_std"] = hyperparams["min_std"] * max_std_over_min
    return hyperparams


def sample_fql_params(trial: Any, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Search space of FQL (FBRAC uses it too): ``alpha`` log-uniform over the authors' sweep range, 0.03 (the low end of
    the values they recommend sweeping on a new task with ``normalize_q_loss``) to 1000 (their puzzle value), whether
    to normalize the Q term, the learning rate and the minibatch size (128 to 512; the authors: 3e-4 and 256).

    :param trial: Optuna trial
    :param n_actions: action dimension (unused)
    :param n_envs: number of environments (unused)
    :param additional_args: Zoo extras (unused)
    :return: FQL keyword arguments
    """
    sampled = {
        "alpha": trial.suggest_float("alpha", 0.03, 1000.0, log=True),
        "normalize_q_loss": trial.suggest_categorical("normalize_q_loss", [True, False]),
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-3, log=True),
        "batch_size_pow": trial.suggest_int("batch_size_pow", 7, 9),
    }
    return convert_fql_params(sampled)


def convert_fql_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """Sampled values -> FQL (or FBRAC, IFQL, CFGRL) keyword arguments."""
    hyperparams = dict(sampled_params)
    if "batch_size_pow" in hyperparams:
        hyperparams["batch_size"] = 2 ** hyperparams.pop("batch_size_pow")
    return hyperparams


def _sample_in_sample_params(trial: Any) -> dict[str, Any]:
    """
    What IFQL and CFGRL share: IQL's expectile (IDQL's 0.7 to the authors' 0.9), and FQL's learning rate and
    minibatch size ranges. The network sizes are left to the config, as FQL's sampler leaves them.
    """
    return {
        "expectile": trial.suggest_categorical("expectile", [0.7, 0.8, 0.9]),
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-3, log=True),
        "batch_size_pow": trial.suggest_int("batch_size_pow", 7, 9),
    }


def sample_ifql_params(trial: Any, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Search space of IFQL: the expectile, N of best-of-N (8, 16, 32; the authors: 32), the learning rate and the
    minibatch size (as FQL's).

    :param trial: Optuna trial
    :param n_actions: action dimension (unused)
    :param n_envs: number of environments (unused)
    :param additional_args: Zoo extras (unused)
    :return: IFQL keyword arguments
    """
    sampled = {**_sample_in_sample_params(trial), "n_samples": trial.suggest_categorical("n_samples", [8, 16, 32])}
    return convert_fql_params(sampled)


def sample_cfgrl_params(trial: Any, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Search space of CFGRL: the expectile, the guidance weight w (1, 1.5, 2, 3: plain conditioning, then extrapolation
    past it; values the authors' evaluations sweep), the label dropout (0.1, the authors', or 0.2), the learning rate
    and the minibatch size (as FQL's).

    :param trial: Optuna trial
    :param n_actions: action dimension (unused)
    :param n_envs: number of environments (unused)
    :param additional_args: Zoo extras (unused)
    :return: CFGRL keyword arguments
    """
    sampled = {
        **_sample_in_sample_params(trial),
        "guidance_weight": trial.suggest_categorical("guidance_weight", [1.0, 1.5, 2.0, 3.0]),
        "label_dropout": trial.suggest_categorical("label_dropout", [0.1, 0.2]),
    }
    return convert_fql_params(sampled)


SAMPLERS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "flow_ppo": (sample_flow_ppo_params, convert_flow_ppo_params),
    "reinflow": (sample_reinflow_params, convert_reinflow_params),
    "fql": (sample_fql_params, convert_fql_params),
    # FBRAC is FQL's baseline on the same core: the same search space (its alpha weights the BC loss instead).
    "fbrac": (sample_fql_params, convert_fql_params),
    "ifql": (sample_ifql_params, convert_fql_params),
    "cfgrl": (sample_cfgrl_params, convert_fql_params),
}
