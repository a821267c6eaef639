"""The offline replay of a chained merge: A, each step's B (and C), a `ChainRecipe` in, only
the final checkpoint out.

Step k merges the previous step's result with its B by the offline merge
(`merging.offline.merge_checkpoints`); every result but the last goes into a temporary folder
beside the output (removed at the end, whatever happens), written in the chain's
``intermediate_dtype`` exactly as the search's WebUI bridge saved it, so the replay gives the
search's tensors bit for bit. The output gets the last step's recipe files and
``<stem>.chain.json`` (the whole chain).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from autombw_cli.chain_recipe import ChainRecipe, write_chain_recipe
from autombw_cli.errors import ConfigError, OutputExistsError
from autombw_cli.merging.offline import (
    MergeReport,
    ProgressFn,
    check_output,
    merge_checkpoints,
    output_path,
    recipe_stem,
)

CHAIN_SUFFIX = ".chain.json"


def chain_recipe_path(output: Path) -> Path:
    """``out/mix.safetensors`` → ``out/mix.chain.json``."""
    stem = recipe_stem(output)
    return stem.with_name(stem.name + CHAIN_SUFFIX)


def merge_chain(
    model_a: Path | str,
    models_b: Sequence[Path | str],
    models_c: Sequence[Path | str],
    chain: ChainRecipe,
    output: Path | str,
    *,
    dtype: str | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> MergeReport:
    """Replay ``chain``: ``models_b`` one per step, ``models_c`` one per add-difference step
    (in step order). Returns the last step's report (its ``elapsed_s`` covers the chain)."""
    started = time.perf_counter()
    steps = chain.steps
    if len(models_b) != len(steps):
        raise ConfigError(
            f"the chain has {len(steps)} steps but {len(models_b)} model B file(s) were given",
            hint="give model A, then one model B per step, in step order: "
            + ", ".join(s.model_b for s in steps),
        )
    needs_c = [s for s in steps if s.formula.needs_c]
    if len(models_c) != len(needs_c):
        raise ConfigError(
            f"the chain has {len(needs_c)} add-difference step(s) but {len(models_c)} model C "
            "file(s) were given",
            hint="one --model-c per add-difference step, in step order"
            + (": " + ", ".join(str(s.model_c) for s in needs_c) if needs_c else ""),
        )
    out = output_path(output)
    c_iter = iter(Path(c) for c in models_c)
    inputs_c = [next(c_iter) if s.formula.needs_c else None for s in steps]
    inputs = [Path(model_a), *(Path(b) for b in models_b), *(c for c in inputs_c if c)]
    check_output(out, inputs, force=force)
    chain_file = chain_recipe_path(out)
    if chain_file.exists() and not force:
        raise OutputExistsError(
            f"{chain_file} already exists; not overwriting it",
            hint="pass --force to overwrite, or choose another -o path",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".autombw-chain-", dir=out.parent) as tmp:
        current = Path(model_a)
        report: MergeReport | None = None
        for k, (recipe, b, c) in enumerate(zip(steps, models_b, inputs_c, strict=True)):
            last = k == len(steps) - 1
            target = out if last else Path(tmp) / f"{recipe.output_name}.safetensors"
            report = merge_checkpoints(
                current,
                b,
                recipe,
                target,
                model_c=c,
                dtype=dtype if last else chain.intermediate_dtype,
                force=True if not last else force,
                progress=progress if last else None,
            )
            current = target
    assert report is not None
    sidecar = write_chain_recipe(chain, chain_file)
    return MergeReport(
        output=report.output,
        recipe_files=(*report.recipe_files, sidecar),
        arch=report.arch,
        keys_per_slot=report.keys_per_slot,
        copied_keys=report.copied_keys,
        total_keys=report.total_keys,
        bytes_written=report.bytes_written,
        elapsed_s=time.perf_counter() - started,
        dtype=report.dtype,
    )
