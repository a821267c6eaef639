"""benchmarks/optimizers.py: which runs the report reads as other candidates' runs."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "optimizers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_optimizers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_optimizers"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_optimizers"]


def run(bench, key: str, seed: int = 0, workers: int = 1, n: int = 270, start: float = 0.0):
    curve = [start + i / 1000 for i in range(n)]
    return bench.RunResult(key, "coupled", seed, workers, n, curve, n, "budget", 1.0)


def test_a_candidate_with_the_defaults_search_counts_as_the_default(bench) -> None:
    keys = ("gp100-portfolio", "gp100-Bayesian", "cmaes-sw27-HC", "gp270", "baseline")
    out = bench.with_derived_runs([run(bench, k) for k in keys])
    defaults = [r for r in out if r.key == "default"]
    # gp ≤100 then the gp/Bayesian portfolio is the shipped default; the previous defaults, gp
    # alone and the auto-MBW-rt baseline (whose search mapping is empty but is not run through
    # it) are not
    assert len(defaults) == 1 and defaults[0].curve == out[0].curve


def test_a_run_made_as_the_default_is_never_replaced(bench) -> None:
    mine = run(bench, "default", start=0.5)
    out = bench.with_derived_runs([mine, run(bench, "gp100-portfolio")])
    assert [r for r in out if r.key == "default"] == [mine]


def test_runs_of_earlier_code_are_read_but_never_the_default_nor_run_again(bench) -> None:
    # default-reask: the default's search, run by code since changed (a portfolio member that
    # repeated itself was asked again): its runs keep their key, and no task runs it
    recorded = next(c for c in bench.RECORDED if c.key == "default-reask")
    out = bench.with_derived_runs([run(bench, "default-reask", seed=3)])
    assert {r.key for r in out} == {"default-reask", "gp"}  # gp: its first pass, unchanged
    assert bench.tasks_for([recorded], ["coupled"], 2, 270, [1, 4]) == []


@pytest.mark.parametrize("whole", ["gp100-portfolio", "gp100-Bayesian", "default", "default-reask"])
def test_gp_to_100_is_read_off_the_first_pass_with_one_in_flight(bench, whole) -> None:
    out = bench.with_derived_runs([run(bench, whole, seed=3), run(bench, whole, seed=4, workers=4)])
    gp = [r for r in out if r.key == "gp"]
    assert [(r.seed, r.workers, r.budget, len(r.curve)) for r in gp] == [(3, 1, 100, 100)]
    assert gp[0].curve == out[0].curve[:100] and math.isnan(gp[0].elapsed_s)
    # a run of gp's own is kept as it is
    own = run(bench, "gp", seed=3, n=100, start=0.9)
    again = bench.with_derived_runs([own, run(bench, whole, seed=3)])
    assert [r for r in again if r.key == "gp"] == [own]


def test_the_sign_test_is_exact_and_two_sided(bench) -> None:
    assert bench.sign_test_p(0, 0) == 1.0
    assert bench.sign_test_p(5, 5) == 1.0
    assert bench.sign_test_p(10, 0) == bench.sign_test_p(0, 10) == 2 / 1024
    assert bench.sign_test_p(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)  # 0.109
    assert bench.sign_test_p(9, 1) < 0.05 < bench.sign_test_p(8, 2)


def test_the_default_is_compared_on_the_seeds_both_have_run(bench, capsys) -> None:
    # the default ran seeds 0-1, cmaes seeds 0-3; cmaes's extra seeds score far higher, but
    # on the common seeds the default is ahead, and the gap line must say so
    runs = [run(bench, "default", seed=s, start=0.5) for s in (0, 1)]
    runs += [run(bench, "cmaes", seed=s, start=0.4) for s in (0, 1)]
    runs += [run(bench, "cmaes", seed=s, start=0.9) for s in (2, 3)]
    cands = [bench.DEFAULT, next(c for c in bench.SINGLES if c.key == "cmaes")]
    bench._report("coupled", 1, runs, cands, 270)
    gap = capsys.readouterr().out.split("default minus the best single optimizer: ")[1]
    assert gap.startswith("@50: +0.100 vs cmaes (ahead on 2, behind on 0 of 2 seeds")
