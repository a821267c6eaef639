"""Every exit code autombw ends with, in one place (README "Exit codes" documents them).

The error families (`autombw_cli.errors`) carry theirs as ``exit_code``; a search that ends
without an error maps its stop reason to one in ``app/run.py``; the CLI exits with them.
"""

from __future__ import annotations

OK = 0
FAILED = 1  # AutombwError, and a search that failed (the error raised decides the final code)
CONFIG = 2  # ConfigError: bad config, option, weights, recipe, payload
WEBUI = 3  # WebUIError; also a search that stopped because every instance is down
MODEL = 4  # ModelMismatchError: checkpoints that cannot be merged
SCORER = 5  # ScorerError
JOURNAL = 6  # JournalError: a run folder, history or recipe file that cannot be read/written
OUTPUT_EXISTS = 7  # OutputExistsError
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
STDOUT_CLOSED = 141  # 128 + SIGPIPE: the reader of our output went away (`autombw ... | head`)
