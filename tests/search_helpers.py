"""Small search configs for the run/CLI integration tests (simulated WebUIs, sim scorer)."""

from __future__ import annotations

import json
from pathlib import Path


def write_search_config(
    folder: Path,
    *,
    instances: str = "{simulate: 2, latency: 0.01}",
    evaluations: int = 12,
    passes: str = "[{optimizer: random}]",
    extra_search: str = "",
    outputs: str = "{run_dir: runs, save_images: best, final_merge: true}",
    size: int = 64,
    prompts: int = 1,
    frozen: str = "{TIME_EMBED: 0.0}",
    models: str = "{a: simA.safetensors, b: simB.safetensors, output: test-merge, arch: sd1}",
) -> Path:
    """A complete config in ``folder`` (payload included); returns the config path."""
    names = []
    for i, subject in enumerate(["an apple", "a tree", "a boat"][:prompts]):
        payload = {
            "prompt": f"a photo of {subject}",
            "negative_prompt": "blurry",
            "seed": 1 + i,
            "steps": 4,
            "width": size,
            "height": size,
        }
        name = subject.split()[-1]
        (folder / f"{name}.json").write_text(json.dumps(payload))
        names.append(f"{name}.json")
    text = f"""
models: {models}
instances: {instances}
payloads: {{files: [{", ".join(names)}]}}
scorer: {{name: sim, device: cpu, tally: arithmetic, sigmoid: false}}
search:
  frozen: {frozen}
  passes: {passes}
  early_stopping: false
  max_evaluations: {evaluations}
  seed: 0
{extra_search}
outputs: {outputs}
"""
    path = folder / "search.yaml"
    path.write_text(text)
    return path


def history_numbers(run_dir: Path) -> list[int]:
    """Evaluation numbers in the run's history.csv (column ``number``), in file order."""
    import csv

    with open(run_dir / "history.csv", newline="", encoding="utf-8") as fh:
        return [int(row["number"]) for row in csv.DictReader(fh)]
