"""The search: search space, optimizer adapters, journal, passes, and the run built on them.

Import from the submodules (``autombw_cli.search.space``, ``.optimizers``, ``.journal``...);
importing this package does nothing else.
"""
