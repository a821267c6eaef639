"""Helpers for tests and benchmarks, not used by the product: synthetic score landscapes
(``landscapes.py``) and a synchronous driver of the search passes (``passes.py``)."""
