"""A run's fixed inputs and per-evaluation arithmetic: the expanded prompts (built once from the
payloads, saved as ``prompts.json`` so a resumed run renders exactly the same), and the tally of
one outcome's raw scores into its score and per-payload scores."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from autombw_cli.config import SearchConfig
from autombw_cli.errors import JournalError
from autombw_cli.payloads import expand_payloads, load_payloads
from autombw_cli.scoring.tally import evaluation_score
from autombw_cli.search.prompt import PromptSpec
from autombw_cli.search.work import Outcome


def expand_prompts(config: SearchConfig) -> list[PromptSpec]:
    payloads = load_payloads(config.payloads.files)
    return expand_payloads(payloads, config.payloads.wildcards, config.search.seed)


def prompts_json(prompts: Sequence[PromptSpec]) -> str:
    return (
        json.dumps(
            [
                {
                    "payload": p.payload_name,
                    "index": p.index,
                    "prompt": p.prompt,
                    "negative_prompt": p.negative_prompt,
                    "seed": p.seed,
                    "score_weight": p.score_weight,
                    "reverse_scoring": p.reverse_scoring,
                    "txt2img": p.body,
                }
                for p in prompts
            ],
            indent=2,
        )
        + "\n"
    )


def read_prompts(path: Path) -> list[PromptSpec]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [
            PromptSpec(
                payload_name=d["payload"],
                index=int(d["index"]),
                prompt=d["prompt"],
                negative_prompt=d["negative_prompt"],
                seed=int(d["seed"]),
                body=dict(d["txt2img"]),
                score_weight=float(d["score_weight"]),
                reverse_scoring=bool(d["reverse_scoring"]),
            )
            for d in data
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JournalError(
            f"{path}: cannot read the run's expanded prompts ({exc})",
            hint="the run folder is damaged; start a new run with the same config",
        ) from exc


def tally_outcome(outcome: Outcome, kind: str, sigmoid: bool) -> tuple[float, dict[str, float]]:
    """The evaluation's score (reverse scoring, optional sigmoid, the tally) and, the same way,
    one score per payload."""
    specs = [ri.spec for ri in outcome.images]

    def score_of(idx: list[int]) -> float:
        return evaluation_score(
            [outcome.raw_scores[i] for i in idx],
            kind=kind,
            weights=[specs[i].score_weight for i in idx],
            reverse=[specs[i].reverse_scoring for i in idx],
            apply_sigmoid=sigmoid,
        )

    total = score_of(list(range(len(specs))))
    per_payload: dict[str, float] = {}
    for name in dict.fromkeys(s.payload_name for s in specs):
        idx = [i for i, s in enumerate(specs) if s.payload_name == name]
        if any(specs[i].score_weight > 0 for i in idx):
            per_payload[name] = score_of(idx)
    return total, per_payload
