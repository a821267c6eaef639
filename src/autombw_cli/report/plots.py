"""PNG plots of a finished (or interrupted) run, drawn with matplotlib's Agg backend.

Pure functions from plain values to a file; each file is written atomically. No pyplot state is
kept: every plot builds its own ``Figure``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from autombw_cli.atomic import atomic_write_bytes
from autombw_cli.blocks import Arch, layout


def _figure(width: float, height: float):  # type: ignore[no-untyped-def]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def best_so_far(scores: Sequence[float]) -> list[float]:
    """Running maximum (scores may be negative)."""
    out: list[float] = []
    best = -math.inf
    for s in scores:
        best = max(best, s)
        out.append(best)
    return out


def plot_scores(
    numbers: Sequence[int],
    scores: Sequence[float],
    path: Path,
    pruned: Sequence[bool] = (),
) -> Path:
    """Score of every evaluation (dots; a pruned one's estimate as a grey cross) and the best
    so far (line, complete evaluations only), in evaluation order."""
    fig = _figure(8, 4)
    ax = fig.add_subplot(1, 1, 1)
    order = sorted(range(len(numbers)), key=lambda i: numbers[i])
    cut = [bool(pruned[i]) if pruned else False for i in order]
    xs = [numbers[i] for i in order]
    ys = [scores[i] for i in order]
    full = [(x, y) for x, y, c in zip(xs, ys, cut, strict=True) if not c]
    ax.scatter([x for x, _ in full], [y for _, y in full], s=12, alpha=0.6, label="evaluation")
    if any(cut):
        px = [x for x, c in zip(xs, cut, strict=True) if c]
        py = [y for y, c in zip(ys, cut, strict=True) if c]
        ax.scatter(px, py, s=14, marker="x", color="grey", label="pruned (estimate)")
    if full:
        fx = [x for x, _ in full]
        ax.step(
            fx,
            best_so_far([y for _, y in full]),
            where="post",
            color="tab:red",
            label="best so far",
        )
    ax.set_xlabel("evaluation")
    ax.set_ylabel("score")
    ax.set_title("Score per evaluation")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def unet_order(arch: Arch) -> list[str]:
    """Slots drawn left to right as data flows through the UNet: IN → M → OUT."""
    lay = layout(arch)
    head = [s for s in lay.slots if s in ("TIME_EMBED", "LABEL_EMB")]
    tail = [s for s in lay.slots if s == "OUT"]
    return [*head, *lay.in_slots, "M00", *lay.out_slots, *tail]


def plot_weights(
    arch: Arch, weights: Mapping[str, float], path: Path, *, title: str = "Best weights"
) -> Path:
    """The weights of one merge drawn over the UNet's blocks IN → M → OUT (a U shape)."""
    order = unet_order(arch)
    lay = layout(arch)
    fig = _figure(10, 4)
    ax = fig.add_subplot(1, 1, 1)
    colors = []
    for slot in order:
        if slot in lay.in_slots:
            colors.append("tab:blue")
        elif slot in lay.out_slots:
            colors.append("tab:orange")
        elif slot == "M00":
            colors.append("tab:green")
        else:
            colors.append("tab:gray")
    values = [weights[s] for s in order]
    ax.bar(range(len(order)), values, color=colors)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=90, fontsize=8)
    ax.set_ylabel("weight (B's share)")
    lo = min(0.0, *values)
    hi = max(1.0, *values)
    ax.set_ylim(lo - 0.05, hi + 0.05)
    ax.axhline(0.5, color="black", linewidth=0.5, alpha=0.4)
    ax.set_title(f"{title}  (blue IN, green M, orange OUT)")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_top_k(
    arch: Arch,
    top: Sequence[tuple[int, float, Mapping[str, float]]],
    path: Path,
) -> Path:
    """The k best evaluations' weights as lines over the blocks (IN → M → OUT)."""
    order = unet_order(arch)
    fig = _figure(10, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for rank, (number, score, weights) in enumerate(top):
        ax.plot(
            range(len(order)),
            [weights[s] for s in order],
            marker="o",
            markersize=3,
            linewidth=2.5 if rank == 0 else 1.0,
            alpha=1.0 if rank == 0 else 0.55,
            label=f"#{number}: {score:.4f}",
        )
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=90, fontsize=8)
    ax.set_ylabel("weight (B's share)")
    ax.set_title(f"Top {len(top)} evaluations")
    ax.grid(True, alpha=0.3)
    if top:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, path)
