"""
An opt-in compiled path for :func:`sb3_flow.common.flow.integrate`: the whole K-step integration as one graph.

At the batch sizes of a rollout step or a ``predict`` call, the K sequential velocity evaluations of a flow cost
dispatch, not arithmetic: a 3x256 MLP at batch 1 is ~0.1 MFLOP per pass, yet each of its ~7 eager ops pays several
microseconds of Python and dispatcher work. ``torch.compile`` traces :func:`~sb3_flow.common.flow.integrate` itself
(the same code as the eager path, so there is one copy of the flow math) into one graph per (batch shape, K, method,
hooks' code, device); inductor then runs it through a generated C++ wrapper on the CPU, without the per-op Python
dispatch, and as CUDA graphs on a GPU.

What a compiled graph holds and what it does not:

- the network's parameters are graph *inputs*, so optimizer steps and ``load_state_dict`` are seen at once;
- noise hooks and velocity modifiers are traced with it: their code is guarded on and the tensors they capture are
  inputs, so a new closure over new tensors each call (ReinFlow's per-step stds) reuses the graph;
- the per-step noise draws of a noisy chain are drawn eagerly (one ``randn`` for all K steps) and passed in, so that
  seeding torch seeds them; they are the same distribution as the eager path's but not the same numbers.

Nothing compiled is ever pickled: :class:`CompiledIntegrator` holds only its settings across pickling and copying,
and compiles again on first use.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch as th

from sb3_flow.common.flow import FlowSample, GridVelocityField, NoiseStdFn, VelocityFn, VelocityModifier, integrate

# Inductor options per device type. CPU: the generated C++ wrapper removes the per-kernel Python calls that dominate
# small graphs. CUDA: CUDA graphs replay the K-step loop's kernels in one launch (their outputs live in memory the next
# replay reuses, so results are cloned before they are handed out).
DEFAULT_INDUCTOR_OPTIONS: dict[str, dict[str, Any]] = {"cpu": {"cpp_wrapper": True}, "cuda": {"triton.cudagraphs": True}}
UNBOUNDED = 1 << 30


def _integrate_graph(
    velocity_fn: VelocityFn | GridVelocityField,
    noise: th.Tensor,
    n_steps: int,
    method: str,
    noise_std_fn: NoiseStdFn | None,
    velocity_modifier: VelocityModifier | None,
    step_noises: th.Tensor | None,
    return_chain: bool,
    return_log_probs: bool,
) -> tuple[th.Tensor, th.Tensor | None, th.Tensor | None]:
    """:func:`integrate` with a tuple result, the function that is compiled."""
    sample = integrate(
        velocity_fn,
        noise,
        n_steps,
        method=method,
        noise_std_fn=noise_std_fn,
        velocity_modifier=velocity_modifier,
        step_noises=step_noises,
        return_chain=return_chain,
        return_log_probs=return_log_probs,
    )
    return sample.actions, sample.chain, sample.step_log_probs


def _code_of(fn: Callable | None) -> Any:
    """What identifies a hook's traced behaviour: its code (a closure's captured tensors are graph inputs)."""
    if fn is None:
        return None
    function = getattr(fn, "__func__", fn)
    return getattr(function, "__code__", type(function))


class CompiledIntegrator:
    """
    Compiled :func:`~sb3_flow.common.flow.integrate` for inference (no autograd), with an eager fallback.

    A call returns ``None`` where the caller should integrate eagerly: autograd is recording, the graph limit is
    reached, or compiling failed (then a one-line warning says why, once; a compiler that is missing altogether turns
    the integrator off).

    :param backend: ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` traces without generating code)
    :param options: inductor options (default: :data:`DEFAULT_INDUCTOR_OPTIONS` of the device the sampler runs on);
        ignored by other backends
    :param max_graphs: distinct (shape, K, method, hooks) combinations compiled at most; later ones run eagerly
    """

    def __init__(self, backend: str = "inductor", options: dict[str, Any] | None = None, max_graphs: int = 16):
        if not isinstance(max_graphs, int) or isinstance(max_graphs, bool) or max_graphs < 1:
            raise ValueError(f"max_graphs must be a positive integer, got {max_graphs!r}")
        self.backend = backend
        self.options = None if options is None else dict(options)
        self.max_graphs = max_graphs
        self._reset()

    def _reset(self) -> None:
        self._compiled: dict[str, Callable] = {}  # per device type
        self._graph_keys: set[tuple] = set()
        self._eager_keys: set[tuple] = set()
        self.compile_seconds = 0.0
        self.disabled_reason: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Settings only: compiled graphs are tied to this process (and cannot be pickled).
        return {"backend": self.backend, "options": self.options, "max_graphs": self.max_graphs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def n_graphs(self) -> int:
        """Number of graphs compiled so far."""
        return len(self._graph_keys)

    def _options(self, device_type: str) -> dict[str, Any] | None:
        if self.backend != "inductor":
            return None
        return dict(DEFAULT_INDUCTOR_OPTIONS.get(device_type, {})) if self.options is None else self.options

    def _run(self, device: th.device, arguments: tuple) -> FlowSample:
        compiled = self._compiled.get(device.type)
        if compiled is None:
            options = self._options(device.type)
            compiled = th.compile(_integrate_graph, backend=self.backend, options=options, dynamic=False, fullgraph=True)
            self._compiled[device.type] = compiled
        outputs = compiled(*arguments)
        if device.type == "cuda":  # CUDA graphs reuse their output memory on the next replay
            outputs = tuple(None if output is None else output.clone() for output in outputs)
        return FlowSample(*outputs)

    def __call__(
        self,
        velocity_fn: VelocityFn | GridVelocityField,
        noise: th.Tensor,
        n_steps: int,
        method: str = "euler",
        noise_std_fn: NoiseStdFn | None = None,
        velocity_modifier: VelocityModifier | None = None,
        step_noises: th.Tensor | None = None,
        return_chain: bool = False,
        return_log_probs: bool = True,
        key_extra: tuple = (),
    ) -> FlowSample | None:
        """
        The arguments of :func:`~sb3_flow.common.flow.integrate`; ``key_extra`` adds what else selects a graph (e.g. the
        network's identity and training mode). Returns ``None`` where the caller should integrate eagerly.
        """
        if self.disabled_reason is not None or th.is_grad_enabled():
            return None
        if noise_std_fn is not None and step_noises is None:
            step_noises = th.randn((n_steps, *noise.shape), device=noise.device, dtype=noise.dtype)
        key = (
            type(velocity_fn),
            tuple(noise.shape),
            noise.dtype,
            noise.device,
            n_steps,
            method,
            _code_of(noise_std_fn),
            _code_of(velocity_modifier),
            step_noises is None,
            return_chain,
            return_log_probs,
            th.backends.mkldnn.enabled,
            *key_extra,
        )
        if key in self._eager_keys:
            return None
        arguments = (
            velocity_fn,
            noise,
            n_steps,
            method,
            noise_std_fn,
            velocity_modifier,
            step_noises,
            return_chain,
            return_log_probs,
        )
        if key in self._graph_keys:
            return self._run(noise.device, arguments)
        if len(self._graph_keys) >= self.max_graphs:
            self._eager_keys.add(key)
            warnings.warn(
                f"compiled sampler: {self.max_graphs} graphs compiled already (max_graphs); this new combination of "
                f"batch shape {tuple(noise.shape)} and K = {n_steps} runs eagerly",
                stacklevel=3,
            )
            return None
        return self._compile_and_run(key, noise.device, arguments)

    def _compile_and_run(self, key: tuple, device: th.device, arguments: tuple) -> FlowSample | None:
        start = time.perf_counter()
        try:
            # The graphs of every policy in the process hang on the one compiled function, so dynamo's per-function
            # limits are lifted while compiling: max_graphs bounds each policy's graphs instead.
            with th._dynamo.config.patch(recompile_limit=UNBOUNDED, accumulated_recompile_limit=UNBOUNDED):
                result = self._run(device, arguments)
        except Exception as error:  # any compiler failure must leave sampling working
            reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            if isinstance(error, th._dynamo.exc.Unsupported):
                self._eager_keys.add(key)  # this hook cannot be traced; others still can
            else:
                self.disabled_reason = reason  # the compiler itself is unavailable
            warnings.warn(f"compiled sampler unavailable ({reason[:200]}); sampling eagerly", stacklevel=4)
            return None
        self.compile_seconds += time.perf_counter() - start
        self._graph_keys.add(key)
        return result
