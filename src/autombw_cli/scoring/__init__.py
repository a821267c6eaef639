"""Scoring: the scorer protocol, the registry of scorers, ensembles and the tally.

Importing this package is cheap (no torch): the model scorers (`imagereward`, `aesthetic`) are
imported when `create_scorer` builds one. See ``registry.py`` for the names and ``settings.py``
for the ``scorer:`` config section.
"""

from autombw_cli.scoring.ensemble import EnsembleScorer, Member
from autombw_cli.scoring.protocol import Scorer
from autombw_cli.scoring.registry import ENTRY_POINT_GROUP, create_scorer, known_scorer_names
from autombw_cli.scoring.settings import (
    EnsembleMember,
    Normalization,
    ScorerConfig,
    ScorerPaths,
    ScorerSpec,
)
from autombw_cli.scoring.tally import Tally, evaluation_score, sigmoid, tally

__all__ = [
    "ENTRY_POINT_GROUP",
    "EnsembleMember",
    "EnsembleScorer",
    "Member",
    "Normalization",
    "Scorer",
    "ScorerConfig",
    "ScorerPaths",
    "ScorerSpec",
    "Tally",
    "create_scorer",
    "evaluation_score",
    "known_scorer_names",
    "sigmoid",
    "tally",
]
