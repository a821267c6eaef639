"""The simulated world: synthetic checkpoints, a simulated WebUI and its scorer.

Used by tests, benchmarks, `autombw webui simulate` and the quickstart; never imported by
production code paths. Importing this package does nothing (submodules load on demand).
"""
