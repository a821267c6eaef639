"""The application: one search run composed from the parts (config, WebUI clients, the scorer,
the search core, the report).

``run.py`` owns a run folder from start to wrap-up, ``instances.py`` opens the WebUIs (and
simulators) and loads the scorer, ``preflight.py`` checks them all before the first evaluation,
``prompts.py`` holds the run's fixed prompts and the tally of one outcome, ``records.py`` what a
run keeps of its evaluations and its seam to the journal, ``wrapup.py`` the outputs. The search
core (``search/``) knows none of these; this package is where they meet.
"""
