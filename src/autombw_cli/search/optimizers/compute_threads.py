"""One compute thread for an optimizer's model fit.

The model-based optimizers fit a small model (a Gaussian process on at most a few thousand
points) on every ask: Optuna's ``gp`` with torch, GFO's ``Bayesian`` and friends with numpy and
scikit-learn. On matrices this small a second thread buys nothing, and a thread pool that spins
while it waits for cores someone else holds costs a great deal: with both cores of a 2-core box
busy, an Optuna ``gp`` ask took 5.5 s with torch's default two threads and 0.8 s with one
(BENCHMARKS.md "Optimizer threads"). A GPU box running autombw also runs the WebUI and the
scorer, so the optimizer asks on one thread, whatever ``OMP_NUM_THREADS`` says.

The OpenMP limit (torch's intra-op threads) holds for the calling thread only, so the scorer's
thread keeps its own; the BLAS limit is process-wide for the duration of the ask.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def one_compute_thread() -> Iterator[None]:
    """Run the block with one BLAS and one OpenMP thread, restoring both afterwards."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield
