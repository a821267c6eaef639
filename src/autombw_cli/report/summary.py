"""The files a run leaves behind: ``summary.json``, the best recipe, plots and best images.

Every function takes plain values and writes atomically; nothing here changes search state.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autombw_cli.atomic import atomic_write_bytes, atomic_write_text
from autombw_cli.blocks import Arch, Ordering, format_weight
from autombw_cli.recipe import Formula, Recipe, write_recipe_files
from autombw_cli.search.evaluation import Evaluation

SUMMARY_FILE = "summary.json"
BEST_IMAGES_DIR = "best-images"
PLOTS_DIR = "plots"
TOP_K = 5


@dataclass(frozen=True)
class ScoreTrace:
    """Every evaluation's number and score (parallel sequences, in recording order): all the
    report needs about the evaluations that are not among the best (the score plot, counts)."""

    numbers: Sequence[int]
    scores: Sequence[float]
    pruned: Sequence[
        bool
    ] = ()  # per evaluation: its score is a pruned one's estimate (empty: none)

    def __post_init__(self) -> None:
        if len(self.numbers) != len(self.scores):
            raise ValueError("numbers and scores differ in length")
        if self.pruned and len(self.pruned) != len(self.numbers):
            raise ValueError("pruned and numbers differ in length")

    @property
    def n_pruned(self) -> int:
        return sum(1 for p in self.pruned if p)

    def __len__(self) -> int:
        return len(self.numbers)

    @classmethod
    def of(cls, records: Sequence[Evaluation]) -> ScoreTrace:
        return cls(
            [r.number for r in records],
            [r.score for r in records],
            [r.pruned for r in records] if any(r.pruned for r in records) else (),
        )


@dataclass(frozen=True)
class BestImage:
    """One image of the best evaluation: its bytes as the WebUI sent them and its prompt."""

    payload_name: str
    index: int
    image_index: int
    prompt: str
    negative_prompt: str
    seed: int | None
    raw: bytes
    raw_score: float


def image_extension(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def top_k(records: Sequence[Evaluation], k: int = TOP_K) -> list[Evaluation]:
    """The ``k`` best complete evaluations, best first (ties: the earlier evaluation)."""
    ok = [r for r in records if r.ok]
    return sorted(ok, key=lambda r: (-(r.score or 0.0), r.number))[:k]


def best_recipe(
    best: Evaluation,
    *,
    model_a: str,
    model_b: str,
    output: str,
    model_c: str | None = None,
    lora: bool = False,
) -> Recipe:
    """The best evaluation as a recipe (``model_c``: an add-difference search's C; ``lora``:
    a LoRA search's, B the LoRA)."""
    formula = Formula.WEIGHTED_SUM if model_c is None else Formula.ADD_DIFFERENCE
    return Recipe(
        model_a=model_a,
        model_b=model_b,
        output_name=output,
        weights=best.weights,
        model_c=model_c,
        formula=Formula.LORA if lora else formula,
    )


def write_lbw_line(recipe: Recipe, run_dir: Path) -> Path:
    """``<output>.lbw.txt`` in the run folder: a LoRA search's best strengths as an
    sd-webui-lora-block-weight preset line (`lbw.lbw_preset_line`)."""
    from autombw_cli.lbw import lbw_preset_line

    path = run_dir / f"{recipe.output_name}.lbw.txt"
    atomic_write_text(path, lbw_preset_line(recipe.output_name, recipe.weights) + "\n")
    return path


def write_best_recipe(recipe: Recipe, run_dir: Path) -> tuple[Path, Path]:
    """``<output>.recipe.txt`` + ``.recipe.json`` in the run folder."""
    return write_recipe_files(recipe, run_dir / recipe.output_name)


def write_best_images(
    images: Sequence[BestImage], folder: Path, *, image_format: str | None = None
) -> list[Path]:
    """The best evaluation's images, one file each, plus ``prompts.txt`` naming their prompts.

    Images are written as the WebUI sent them, re-encoded only when ``image_format``
    (png/jpeg/webp) differs from what it sent."""
    written: list[Path] = []
    lines = []
    for img in images:
        stem = _safe(f"{img.payload_name}-{img.index:02d}-{img.image_index}")
        data, ext = _encoded(img.raw, image_format)
        name = f"{stem}.{ext}"
        written.append(atomic_write_bytes(folder / name, data))
        lines.append(
            f"{name}\tscore={img.raw_score:.6g}\tseed={img.seed}\tprompt={img.prompt}"
            f"\tnegative={img.negative_prompt}"
        )
    if images:
        written.append(atomic_write_text(folder / "prompts.txt", "\n".join(lines) + "\n"))
    return written


def _encoded(raw: bytes, image_format: str | None) -> tuple[bytes, str]:
    ext = image_extension(raw)
    want = {"png": "png", "jpeg": "jpg", "jpg": "jpg", "webp": "webp"}.get(image_format or "")
    if not want or want == ext or ext == "bin":
        return raw, ext
    import io

    from PIL import Image

    buf = io.BytesIO()
    with Image.open(io.BytesIO(raw)) as im:
        fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[want]
        (im.convert("RGB") if fmt == "JPEG" else im).save(buf, format=fmt, quality=95)
    return buf.getvalue(), want


def _safe(name: str) -> str:
    return re.sub(r"[^\w.+-]", "_", name)


def build_summary(
    *,
    name: str,
    run_dir: Path,
    reason: str,
    exit_code: int,
    records: Sequence[Evaluation],
    budget: int | None,
    elapsed_s: float,
    failed: int,
    instances: Mapping[str, Mapping[str, Any]],
    model_a: str,
    model_b: str,
    arch: Arch,
    outputs: Mapping[str, str],
    model_c: str | None = None,
    passes: Sequence[Mapping[str, Any]] = (),
    trace: ScoreTrace | None = None,
    lora: bool = False,
) -> dict[str, Any]:
    """The JSON-able summary of a run (pure).

    ``records`` needs to hold only the best ``TOP_K`` evaluations when ``trace`` (every
    evaluation's number and score) is given; without it ``records`` is every evaluation."""
    trace = ScoreTrace.of(records) if trace is None else trace
    best = top_k(records, 1)
    best_entry: dict[str, Any] | None = None
    if best:
        b = best[0]
        best_entry = {
            "number": b.number,
            "pass": b.pass_index,
            "score": b.score,
            "instance": b.instance,
            "payload_scores": dict(b.payload_scores),
            "weights": b.weights.to_dict(),
            "recipe_line": ",".join(format_weight(v) for v in b.weights.to_list(Ordering.RECIPE)),
            "nat_line": ",".join(format_weight(v) for v in b.weights.to_list(Ordering.NAT)),
            "found_after": sum(1 for n in trace.numbers if n <= b.number),
        }
    return {
        "name": name,
        "run_dir": str(run_dir),
        "stop_reason": reason,
        "exit_code": exit_code,
        "models": {"a": model_a, "b": model_b, "arch": arch.value}
        | ({} if model_c is None else {"c": model_c, "formula": Formula.ADD_DIFFERENCE.value})
        | ({"formula": Formula.LORA.value} if lora else {}),
        "evaluations": len(trace),
        "pruned": trace.n_pruned,  # of those, stopped after their first images
        "failed_attempts": failed,  # evaluation attempts that failed (retried or given up)
        "budget": budget,
        "elapsed_s": round(elapsed_s, 3),
        "best": best_entry,
        "top": [
            {"number": r.number, "score": r.score, "weights": r.weights.to_dict()}
            for r in top_k(records)
        ],
        "passes": list(passes),
        "instances": {k: dict(v) for k, v in instances.items()},
        "outputs": dict(outputs),
    }


def write_summary(summary: Mapping[str, Any], run_dir: Path) -> Path:
    return atomic_write_text(
        run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n"
    )


def write_plots(
    records: Sequence[Evaluation],
    arch: Arch,
    run_dir: Path,
    trace: ScoreTrace | None = None,
) -> list[Path]:
    """Score per evaluation, the best weights over the UNet, the top-k weights.

    ``records``: the best ``TOP_K`` evaluations are enough when ``trace`` is given."""
    from autombw_cli.report import plots

    if not records:
        return []
    trace = ScoreTrace.of(records) if trace is None else trace
    folder = run_dir / PLOTS_DIR
    best = top_k(records, 1)[0]
    return [
        plots.plot_scores(trace.numbers, trace.scores, folder / "scores.png", trace.pruned),
        plots.plot_weights(
            arch,
            best.weights.to_dict(),
            folder / "best-weights.png",
            title=f"Best weights (#{best.number}, score {best.score:.4f})",
        ),
        plots.plot_top_k(
            arch,
            [(r.number, r.score, r.weights.to_dict()) for r in top_k(records)],
            folder / "top-k.png",
        ),
    ]
