"""gradient-free-optimizers (the engine under Hyperactive and auto-MBW-rt) behind the ask/tell seam.

GFO's public ask/tell classes (`gradient_free_optimizers.ask_tell`) allow exactly one batch in
flight: ``ask(n)`` must be followed by ``tell(scores)`` for that whole batch. Our workers finish
in any order, so this adapter drives the optimizer's own lifecycle hooks the way GFO's
"true async" distributed search does (``_iterate_batch(1)`` per free worker,
``_evaluate_batch([pos], [score])`` per result), with three repairs:

- Population optimizers keep per-batch bookkeeping (``_batch_particle_indices``...) that the
  next ``_iterate_batch`` overwrites; it is saved with each trial and restored before its tell,
  and the member index is offset by the trials in flight so two free workers move two members.
- Optimizers that need whole batches (DownhillSimplex, PowellsMethod, DirectAlgorithm:
  ``_supports_async = False``) get one proposal in flight at a time; other free workers get
  random unseen points meanwhile, which are told to the optimizer as extra observations.
- Initialisation (GFO's ``initialize`` positions: grid, random, vertices) is handed out first;
  results, together with every enqueued/replayed evaluation, are fed through GFO's init
  machinery once enough are in (exactly what ``ask_tell``'s ``initial_evaluations`` does). A warm
  start that already holds enough evaluations skips the init positions.

Model-based optimizers (Bayesian, TreeStructuredParzenEstimators, Forest, Lipschitz) pick their
acquisition candidates from ``all_pos_comb``, a Cartesian sub-grid drawn ONCE with at most
``max_sample_size`` points. On 27 blocks x 11 values, 1e7 points leave ~1.8 values per block, so
many blocks can never move (measured: 13 of 27 blocks had a single candidate value, see
BENCHMARKS.md). With ``candidates: resample`` (our default) the adapter instead gives the model
fresh candidates every ask: uniform random grid points plus mutations of the best points so far,
excluding every point already seen. ``candidates: subgrid`` keeps GFO's behaviour.

GFO seeds and draws from the process-global ``random`` and ``numpy.random`` state; the adapter
swaps in its own saved state around every backend call, so a seeded run repeats exactly no matter
what else runs in the process.
"""

from __future__ import annotations

import contextlib
import logging
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autombw_cli.blocks import Weights
from autombw_cli.search.optimizers.base import AdapterBase
from autombw_cli.search.optimizers.compute_threads import one_compute_thread
from autombw_cli.search.space import SearchSpace

log = logging.getLogger(__name__)

# Attributes GFO population optimizers set in _iterate_batch and read in _evaluate_batch.
_BATCH_ATTRS = (
    "_batch_particle_indices",
    "_batch_individual_indices",
    "_batch_individual_refs",
    "_batch_system_indices",
    "_batch_n_from_generation",
)
_RESAMPLED_CLASSES = (
    "BayesianOptimizer",
    "TreeStructuredParzenEstimators",
    "ForestOptimizer",
    "LipschitzOptimizer",
)
GFO_DEFAULT_INITIALIZE = {"grid": 4, "random": 2, "vertices": 4}


@dataclass
class _Token:
    kind: str  # "init" (a GFO init position), "iter" (a proposal), "fixed" (enqueued/random)
    pos: np.ndarray
    snapshot: dict[str, Any] = field(default_factory=dict)


class _GlobalRng:
    """The process-global random states GFO uses, kept private to one adapter."""

    def __init__(self) -> None:
        self.np_state: Any = None
        self.py_state: Any = None

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        outer_np, outer_py = np.random.get_state(), random.getstate()
        if self.np_state is not None:
            np.random.set_state(self.np_state)
            random.setstate(self.py_state)
        try:
            yield
        finally:
            self.np_state, self.py_state = np.random.get_state(), random.getstate()
            np.random.set_state(outer_np)
            random.setstate(outer_py)


class GfoOptimizer(AdapterBase):
    """A gradient-free-optimizers class driven asynchronously (see the module docstring)."""

    def __init__(
        self,
        name: str,
        gfo_class: str,
        space: SearchSpace,
        seed: int,
        *,
        initialize: dict[str, int] | None = None,
        candidates: str = "resample",
        n_candidates: int = 4000,
        local_fraction: float = 0.5,
        **gfo_settings: Any,
    ) -> None:
        super().__init__(space, seed)
        # lazily: gradient-free-optimizers (with scikit-learn) loads only for its optimizers
        from gradient_free_optimizers import optimizers as gfo_optimizers

        self.name = name
        self._gfo_rng = _GlobalRng()
        self._search_space = self._gfo_space(space)
        cls = getattr(gfo_optimizers, gfo_class)
        self._candidate_mode = candidates if gfo_class in _RESAMPLED_CLASSES else None
        self._n_subgrid = 0
        self._full_subgrid: np.ndarray | None = None
        if self._candidate_mode is not None:
            sampling = gfo_settings.get("sampling")
            self._n_subgrid = (
                0 if sampling is False else int((sampling or {}).get("random", 1_000_000))
            )
            cls = type(f"Candidates{gfo_class}", (_AdapterCandidates, cls), {})
            gfo_settings = {**gfo_settings, "sampling": False}
        self._n_candidates = n_candidates
        self._local_fraction = local_fraction
        with self._gfo_rng.scope():
            self._opt = cls(
                self._search_space,
                initialize=dict(initialize or GFO_DEFAULT_INITIALIZE),
                random_state=seed,
                **gfo_settings,
            )
        self._async_ok = bool(getattr(self._opt, "_supports_async", True))
        self._is_population = hasattr(self._opt, "optimizers") and bool(self._opt.optimizers)
        self._is_smbo = hasattr(self._opt, "X_sample")
        self._init_queue: list[np.ndarray] = list(self._opt.init.init_positions_l)
        min_required = len(self._opt.optimizers) if self._is_population else 1
        self._n_init_target = max(len(self._init_queue), min_required, 1)
        self._init_results: list[tuple[np.ndarray, float]] = []
        self._phase = "init"
        self._iter_out = 0  # GFO proposals in flight
        self._scores: list[tuple[np.ndarray, float]] = []  # every complete result, for candidates
        self._seen_pos: set[bytes] = set()  # every position handed out

    # --- space mapping ------------------------------------------------------------------
    @staticmethod
    def _gfo_space(space: SearchSpace) -> dict[str, Any]:
        if space.is_grid:
            return {p.name: space.grid(p) for p in space.params}
        return {p.name: (p.low, p.high) for p in space.params}

    def _pos_of(self, params: dict[str, float]) -> np.ndarray:
        if not self.space.is_grid:
            return np.array([params[n] for n in self.space.names], dtype=float)
        return np.array(
            [int(np.argmin(np.abs(self._search_space[n] - params[n]))) for n in self.space.names]
        )

    def _params_of(self, pos: np.ndarray) -> dict[str, float]:
        if not self.space.is_grid:
            return {n: float(v) for n, v in zip(self.space.names, pos, strict=True)}
        return {
            n: float(self._search_space[n][round(float(i))])
            for n, i in zip(self.space.names, pos, strict=True)
        }

    # --- backend hooks ------------------------------------------------------------------
    def _backend_ask(self) -> tuple[dict[str, float], Any] | None:
        if self._phase == "init":
            if len(self._init_results) >= self._n_init_target:
                self._finish_init()
            elif self._init_queue:
                pos = self._init_queue.pop(0)
                return self._params_of(pos), _Token("init", np.asarray(pos))
            else:
                return None  # waiting for init results: the base hands out a random point
        if not self._async_ok and self._iter_out > 0:
            return None
        opt = self._opt
        with self._gfo_rng.scope():
            if self._candidate_mode == "resample":
                opt.all_pos_comb = self._candidates()
            elif self._candidate_mode == "subgrid":
                opt.all_pos_comb = self._subgrid_candidates()
            saved_trial = opt.nth_trial
            if self._is_population:
                opt.nth_trial = saved_trial + self._iter_out
            try:
                with one_compute_thread(), warnings.catch_warnings():
                    # sklearn's GP warns on nearly every fit that a noise bound is reached,
                    # and often that L-BFGS stopped early; neither is the user's to act on
                    warnings.filterwarnings("ignore", message=".*close to the specified")
                    warnings.filterwarnings("ignore", message=".*lbfgs failed to converge")
                    pos = opt._iterate_batch(1)[0]
            finally:
                opt.nth_trial = saved_trial
        snapshot = {a: _copy(getattr(opt, a)) for a in _BATCH_ATTRS if hasattr(opt, a)}
        self._iter_out += 1
        pos = np.asarray(pos)
        return self._params_of(pos), _Token("iter", pos, snapshot)

    def _backend_ask_fixed(self, weights: Weights) -> Any:
        return _Token("fixed", self._pos_of(self.space.to_params(weights)))

    def _backend_tell(self, token: _Token, score: float | None) -> None:
        if score is not None:
            self._scores.append((token.pos, score))
        if token.kind == "iter":
            if score is None and self._async_ok:
                self._iter_out -= 1
                return  # nothing to learn from a failure
            self._evaluate_proposal(token, score)
            return
        if score is None:
            return
        if self._phase == "init":
            self._init_results.append((token.pos, score))
            return
        self._tell_foreign(token.pos, score)

    def _backend_duplicate(self, token: _Token, score: float | None) -> None:
        if token.kind != "iter":
            return  # a duplicate init position is simply dropped
        if score is None and self._async_ok:
            self._iter_out -= 1  # in flight elsewhere: drop the proposal
            return
        self._evaluate_proposal(token, score)  # a cache hit (or a placeholder for a batch)

    def _on_issue(self, token: _Token) -> None:
        self._seen_pos.add(_pos_key(token.pos))

    # --- internals ----------------------------------------------------------------------
    def _evaluate_proposal(self, token: _Token, score: float | None) -> None:
        self._iter_out -= 1
        if score is None:  # a whole-batch optimizer needs a value: the worst score so far
            score = min((s for _, s in self._scores), default=0.0)
        with self._gfo_rng.scope():
            for attr, value in token.snapshot.items():
                setattr(self._opt, attr, value)
            self._opt._evaluate_batch([token.pos], [score])

    def _finish_init(self) -> None:
        opt = self._opt
        with self._gfo_rng.scope():
            for pos, score in self._init_results:
                opt._pos_new = pos
                opt.nth_init += 1
                opt._on_init_pos(pos)
                opt._evaluate_init(score)
            opt._finish_initialization()
        self._phase = "iter"
        self._init_queue.clear()
        log.debug("%s: initialised with %d evaluations", self.name, len(self._init_results))

    def _tell_foreign(self, pos: np.ndarray, score: float) -> None:
        """An evaluation the optimizer did not propose (a random fill-in, a late init result,
        a replayed point after initialisation): data for model-based optimizers, a best-so-far
        candidate for the others (as GFO itself treats CMA-ES overflow positions)."""
        opt = self._opt
        with self._gfo_rng.scope():
            if self._is_smbo:
                opt._evaluate_batch([pos], [score])
            else:
                opt._pos_new = pos
                opt._track_score(score)
                opt._update_best(pos, score)

    def _subgrid_candidates(self) -> np.ndarray:
        """GFO's candidates: rows of the product of the per-block subsets drawn at
        initialisation, all of them when few, else ``sampling.random`` rows at random (what
        GFO's ``_sampling`` picks from the enumerated product each iteration)."""
        pos_space = self._opt._pos_space
        size = float(np.prod([float(len(v)) for v in pos_space]))
        if self._n_subgrid == 0 or size <= self._n_subgrid:
            if self._full_subgrid is None:
                grids = np.meshgrid(*pos_space)
                self._full_subgrid = np.array(grids).T.reshape(-1, len(pos_space)).astype(float)
            return self._full_subgrid
        cols = [
            np.asarray(v)[np.random.randint(0, len(v), size=self._n_subgrid)] for v in pos_space
        ]
        return np.stack(cols, axis=1).astype(float)

    def _candidates(self) -> np.ndarray:
        """Fresh acquisition candidates: uniform points + mutations of the best, all unseen."""
        rng = self._rng
        n = self._n_candidates
        n_local = int(n * self._local_fraction) if self._scores else 0
        names = self.space.names
        if self.space.is_grid:
            sizes = np.array([self._search_space[k].size for k in names])
            uniform = rng.integers(0, sizes, size=(n - n_local, len(names)))
        else:
            lows = np.array([p.low for p in self.space.params])
            highs = np.array([p.high for p in self.space.params])
            uniform = rng.uniform(lows, highs, size=(n - n_local, len(names)))
        parts = [uniform.astype(float)]
        if n_local:
            top = sorted(self._scores, key=lambda ps: ps[1], reverse=True)[:5]
            bases = np.array([p for p, _ in top], dtype=float)
            local = bases[rng.integers(0, len(bases), size=n_local)]
            n_dims = len(names)
            # change ~1.5 blocks per candidate on average, at least one
            mask = rng.random((n_local, n_dims)) < 0.5 / n_dims
            mask[np.arange(n_local), rng.integers(0, n_dims, size=n_local)] = True
            if self.space.is_grid:
                steps = rng.choice(np.array([-2.0, -1.0, 1.0, 2.0]), size=(n_local, n_dims))
                local = np.clip(local + mask * steps, 0, sizes - 1)
            else:
                noise = rng.normal(0, 0.1, size=(n_local, n_dims)) * (highs - lows)
                local = np.clip(local + mask * noise, lows, highs)
            parts.append(local)
        cands = np.unique(np.concatenate(parts), axis=0)
        if self.space.is_grid and len(cands):
            keep = np.array([_pos_key(c) not in self._seen_pos for c in cands], dtype=bool)
            cands = cands[keep]
        if not len(cands):
            cands = uniform[:1].astype(float)
        return cands


class _AdapterCandidates:
    """Replaces GFO's one-off enumeration of its candidate sub-grid (a Python loop over up to
    1e7 rows): the per-block value subsets are still drawn once by GFO's own sampler
    (``self.sampler.get_pos_space()``, kept in ``_pos_space``), and the adapter sets
    ``all_pos_comb`` before every ask."""

    _pos_space: list | None = None

    def _all_possible_pos(self) -> np.ndarray:
        self._pos_space = self.sampler.get_pos_space()  # type: ignore[attr-defined]
        return np.zeros((1, len(self.search_space)))  # type: ignore[attr-defined]


def _pos_key(pos: np.ndarray) -> bytes:
    """Identity of a position: grid indices (continuous values rounded to 1e-6)."""
    return np.round(np.asarray(pos, dtype=float), 6).tobytes()


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value
