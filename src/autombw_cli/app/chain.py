"""`ChainRun`: a chained merge (config ``chain:``), one search per step, in one folder.

Step 1 merges ``models.a`` and ``models.b``; step k > 1 merges step k-1's result (as A) with
its own B. The folder::

    runs/<output>-<time>/
      config.yaml          the whole config (with chain:), secrets redacted
      chain-state.json     per step: the name its result is saved under, and whether it is
      chain.recipe.json    the finished steps' recipes (`ChainRecipe`, autombw-chain/1)
      step-1/ step-2/ ...  each an ordinary run folder (config.yaml, journal, summary, recipe)

Each step is an ordinary `Run` (its own config: the top level with that step's models,
payloads and search overrides) over the same WebUI instances, which the chain opens once. At
the end of a step but the last, its best merge is saved through the bridge on every instance
as ``<chain folder>-step<k>`` (the next free name unless ``outputs.overwrite``), and that name
is the next step's A. A step after the first starts from all-zero weights (the previous
result unchanged: a known, scoreable start) unless its ``search.initial`` says otherwise.

Resume (``autombw search --resume CHAIN_DIR``) skips the finished steps (a step is finished
when its ``summary.json`` says it ended by budget, time, early stop or exhaustion), makes sure
every earlier result is in every instance's checkpoint list (a fresh WebUI or simulator gets it
merged and saved again, from the recorded recipes) and resumes the running step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from autombw_cli.app import instances as inst_mod
from autombw_cli.app.instances import Endpoint
from autombw_cli.app.run import CONFIG_FILE, Run, RunResult, new_run_folder, remove_new_folder
from autombw_cli.atomic import atomic_write_text
from autombw_cli.blocks import Weights, layout
from autombw_cli.chain_recipe import ChainRecipe, write_chain_recipe
from autombw_cli.config import SearchConfig, load_config
from autombw_cli.config.chain_section import step_models
from autombw_cli.errors import AutombwError, ConfigError, JournalError, WebUIError
from autombw_cli.folderlock import FolderLock
from autombw_cli.recipe import Recipe, read_recipe_file
from autombw_cli.report.summary import SUMMARY_FILE
from autombw_cli.search.events import EventSink, Notice, OutputWritten, RunWarning, StopReason
from autombw_cli.webui.errors import CheckpointNotLoaded, WebUIHTTPError

log = logging.getLogger(__name__)

STATE_FILE = "chain-state.json"
RECIPE_FILE = "chain.recipe.json"
STATE_FORMAT = "autombw-chain-state/1"
# a step that ended this way is finished: the chain goes on (the others stop the chain)
FINISHED = (StopReason.BUDGET, StopReason.EARLY_STOPPED, StopReason.TIME, StopReason.EXHAUSTED)
INTERMEDIATE_FORMAT = "safetensors"
MAX_NAME_TRIES = 100


def is_chain_folder(folder: Path) -> bool:
    return (Path(folder) / STATE_FILE).is_file()


def step_folder(chain_dir: Path, k: int) -> Path:
    return chain_dir / f"step-{k}"


def step_config(cfg: SearchConfig, k: int, *, model_a: str, output: str) -> SearchConfig:
    """Step ``k``'s config (1-based): the top level with this step's models, payloads and
    search overrides; no final merge but for the last step (and then only through the bridge:
    an offline final merge replays the whole chain, see `ChainRun`)."""
    assert cfg.chain is not None
    data: dict[str, Any] = cfg.model_dump(mode="json")
    data.pop("chain", None)
    if k == 1:
        data["models"]["output"] = output
    else:
        step = cfg.chain[k - 2]
        models = step_models(cfg.models, step, a=model_a, output=output)
        data["models"] = models.model_dump(mode="json")
        if step.payloads is not None:
            data["payloads"] = step.payloads.model_dump(mode="json")
        overrides = step.search.model_dump(mode="json", exclude_none=True) if step.search else {}
        overrides.setdefault("initial", {"weights": "0"})  # the previous result unchanged
        data["search"].update(overrides)
    last = k == len(cfg.chain) + 1
    if not last or cfg.outputs.merge_via == "offline":
        data["outputs"]["final_merge"] = False
    return SearchConfig.model_validate(data, context={"check_paths": False})


@dataclass(frozen=True)
class StepState:
    saved_as: str | None = None  # the name its result is (being) saved under
    saved: bool = False  # saved on every instance


@dataclass(frozen=True)
class ChainState:
    steps: tuple[StepState, ...]

    @classmethod
    def new(cls, n: int) -> ChainState:
        return cls(tuple(StepState() for _ in range(n)))

    def with_step(self, k: int, state: StepState) -> ChainState:
        steps = list(self.steps)
        steps[k - 1] = state
        return ChainState(tuple(steps))

    def to_json(self) -> str:
        steps = [{"step": i + 1, **dataclasses.asdict(s)} for i, s in enumerate(self.steps)]
        return json.dumps({"format": STATE_FORMAT, "steps": steps}, indent=2) + "\n"

    @classmethod
    def read(cls, path: Path, n: int) -> ChainState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            steps = tuple(
                StepState(saved_as=s.get("saved_as"), saved=bool(s.get("saved")))
                for s in data["steps"]
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise JournalError(
                f"{path}: not a readable chain state ({exc})",
                hint="the step folders are intact: resume a step alone with "
                "`autombw search --resume CHAIN_DIR/step-K`",
            ) from None
        if len(steps) != n:
            raise JournalError(f"{path}: {len(steps)} steps, but the chain's config has {n}")
        return cls(steps)


class ChainRun:
    """A chained merge's folder and its steps (see the module docstring)."""

    def __init__(self, config: SearchConfig, chain_dir: Path, state: ChainState) -> None:
        assert config.chain is not None
        self.config = config
        self.run_dir = chain_dir
        self.state = state
        self.n = len(config.chain) + 1
        self._lock = FolderLock.acquire(chain_dir, what="chain folder")
        self._created_root: Path | None = None  # set by create(): removed if nothing ran

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def create(cls, config: SearchConfig, *, now: datetime | None = None) -> ChainRun:
        if config.chain is None:
            raise ConfigError("the config has no chain: section")
        name = config.outputs.run_name or config.models.output
        stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
        chain_dir, created_root = new_run_folder(Path(config.outputs.run_dir), f"{name}-{stamp}")
        try:
            atomic_write_text(chain_dir / CONFIG_FILE, config.redacted_yaml())
            state = ChainState.new(len(config.chain) + 1)
            atomic_write_text(chain_dir / STATE_FILE, state.to_json())
        except BaseException:
            remove_new_folder(chain_dir, created_root)
            raise
        chain = cls(config, chain_dir, state)
        chain._created_root = created_root
        return chain

    @classmethod
    def resume(cls, chain_dir: Path) -> ChainRun:
        chain_dir = Path(chain_dir)
        config = load_config(chain_dir / CONFIG_FILE, check_paths=False)
        if config.chain is None:
            raise ConfigError(f"{chain_dir}/{CONFIG_FILE} has no chain: section")
        state = ChainState.read(chain_dir / STATE_FILE, len(config.chain) + 1)
        return cls(config, chain_dir, state)

    # --- the chain ---------------------------------------------------------------------------
    def intermediate_name(self, k: int) -> str:
        return f"{self.run_dir.name}-step{k}"

    def output_of(self, k: int) -> str:
        """The name step ``k``'s result is saved under (the last step: ``models.output``)."""
        if k == self.n:
            return self.config.models.output
        return self.state.steps[k - 1].saved_as or self.intermediate_name(k)

    async def execute(self, emit: EventSink, *, handle_signals: bool = True) -> RunResult:
        try:
            return await self._execute(emit, handle_signals)
        except AutombwError:
            if self._created_root is not None and not step_folder(self.run_dir, 1).exists():
                self._lock.release()  # failed before step 1 began (a model missing): no trace
                remove_new_folder(self.run_dir, self._created_root)
            raise
        finally:
            self._lock.release()

    async def _execute(self, emit: EventSink, handle_signals: bool) -> RunResult:
        cfg = self.config
        recipes: list[Recipe] = []
        done = 0
        result: RunResult | None = None
        async with contextlib.AsyncExitStack() as stack:
            if cfg.simulated:
                emit(Notice(message=f"starting {cfg.instances.simulate} simulated WebUI(s)"))
            endpoints = await inst_mod.open_instances(cfg, stack)
            if not cfg.outputs.keep_merge_loaded:
                # at the end (after the bridge's restore, which gives back the last step's A,
                # an intermediate result): the chain's own model A loaded again
                stack.push_async_callback(_give_back_model_a, endpoints, cfg, emit)
                stack.push_async_callback(inst_mod.restore_instances, endpoints, emit)
            await self._check_step_models(endpoints)
            for k in range(1, self.n + 1):
                if k > 1:  # the previous results, in every instance (saved again if missing)
                    for j in range(1, k):
                        recipes[j - 1] = await self._publish(j, recipes[j - 1], endpoints, emit)
                    self._write_recipe(recipes, emit)
                folder = step_folder(self.run_dir, k)
                model_a = cfg.models.a if k == 1 else self.output_of(k - 1)
                if _finished(folder):
                    emit(Notice(message=f"chain step {k}/{self.n}: finished before, skipped"))
                    recipes.append(self._step_recipe(k, folder))
                    continue
                emit(Notice(message=f"chain step {k}/{self.n}: {model_a} + {self._b(k)}"))
                run = self._open_step(k, folder, model_a)
                run.endpoints = endpoints
                result = await run.execute(emit, handle_signals=handle_signals)
                done += result.done
                if result.reason not in FINISHED:
                    return dataclasses.replace(result, run_dir=self.run_dir)
                recipes.append(self._step_recipe(k, folder))
            outputs = await self._final_outputs(recipes, result, emit)
        reason = result.reason if result is not None else StopReason.BUDGET
        return RunResult(self.run_dir, reason, done, result.best if result else None, outputs, None)

    async def _check_step_models(self, endpoints: list[Endpoint]) -> None:
        """Every later step's B (and C) in every instance, checked before step 1 starts (each
        step's preflight checks its own models too, but only when the step comes)."""
        assert self.config.chain is not None
        missing = []
        for e in endpoints:
            for k, step in enumerate(self.config.chain, start=2):
                for role, name in (("B", step.b), ("C", step.c)):
                    if name is not None and not await _listed(e, name):
                        missing.append(f"{e.label}: model {role} of chain step {k} ({name})")
        if missing:
            raise WebUIError(
                "not in the WebUI's checkpoint list: " + "; ".join(missing),
                hint="copy the checkpoints into each WebUI's models/Stable-diffusion folder, "
                "or fix the names under chain:",
            )

    def _b(self, k: int) -> str:
        assert self.config.chain is not None
        return self.config.models.b if k == 1 else self.config.chain[k - 2].b

    def _open_step(self, k: int, folder: Path, model_a: str) -> Run:
        if (folder / CONFIG_FILE).is_file():
            return Run.resume(folder)
        if folder.exists():  # killed between making the folder and writing its config
            shutil.rmtree(folder)
        cfg = step_config(self.config, k, model_a=model_a, output=self.output_of(k))
        return Run.create(cfg, folder=folder)

    def _step_recipe(self, k: int, folder: Path) -> Recipe:
        """Step ``k``'s best (the validated winner when validated), named as saved."""
        path = folder / f"{self._step_output(k, folder)}.recipe.json"
        if not path.is_file():
            raise JournalError(
                f"{folder}: step {k} finished without a best recipe ({path.name})",
                hint="no evaluation of this step succeeded; see its run.log",
            )
        recipe = read_recipe_file(path)
        return dataclasses.replace(recipe, output_name=self.output_of(k))

    def _step_output(self, k: int, folder: Path) -> str:
        """The ``models.output`` the step's own config gave (its recipe files' name)."""
        return load_config(folder / CONFIG_FILE, check_paths=False).models.output

    def _write_recipe(self, recipes: list[Recipe], emit: EventSink) -> Path:
        chain = ChainRecipe(tuple(recipes), intermediate_dtype=self.config.outputs.dtype)
        path = write_chain_recipe(chain, self.run_dir / RECIPE_FILE)
        emit(OutputWritten(path=path, what="chain_recipe"))
        return path

    # --- the results in the WebUIs -----------------------------------------------------------
    async def _publish(
        self, k: int, recipe: Recipe, endpoints: list[Endpoint], emit: EventSink
    ) -> Recipe:
        """Make step ``k``'s result a checkpoint in every instance: the first time under a
        free name (recorded before the first save), later only where it is missing. Returns
        the recipe named as saved."""
        step = self.state.steps[k - 1]
        overwrite = self.config.outputs.overwrite
        if step.saved_as is None:
            name = await self._free_name(k, endpoints, overwrite=overwrite)
            self._set_state(k, StepState(saved_as=name, saved=False))
            step = self.state.steps[k - 1]
        name = step.saved_as
        assert name is not None
        recipe = dataclasses.replace(recipe, output_name=name)
        for e in endpoints:
            if (step.saved or not overwrite) and await _listed(e, name):
                continue
            emit(Notice(message=f"{e.label}: saving chain step {k}'s result as {name}"))
            await _merge_and_save(e, recipe, self.config, overwrite=overwrite)
        if not step.saved:
            self._set_state(k, StepState(saved_as=name, saved=True))
        return recipe

    async def _free_name(self, k: int, endpoints: list[Endpoint], *, overwrite: bool) -> str:
        base = self.intermediate_name(k)
        if overwrite:
            return base
        for name in [base, *(f"{base}-{n}" for n in range(2, MAX_NAME_TRIES + 1))]:
            if not any([await _listed(e, name) for e in endpoints]):
                return name
        raise ConfigError(f"{base} and {MAX_NAME_TRIES - 1} numbered names are all taken")

    def _set_state(self, k: int, step: StepState) -> None:
        self.state = self.state.with_step(k, step)
        atomic_write_text(self.run_dir / STATE_FILE, self.state.to_json())

    async def _final_outputs(
        self, recipes: list[Recipe], last: RunResult | None, emit: EventSink
    ) -> dict[str, str]:
        outputs = dict(last.outputs) if last is not None else {}
        outputs["recipe"] = str(self._write_recipe(recipes, emit))
        o = self.config.outputs
        if o.final_merge and o.merge_via == "offline":
            outputs["checkpoint"] = str(await self._offline_merge(recipes, emit))
        return outputs

    async def _offline_merge(self, recipes: list[Recipe], emit: EventSink) -> Path:
        import asyncio

        from autombw_cli.merging.chain import merge_chain

        cfg = self.config
        assert cfg.chain is not None and cfg.models.a_file and cfg.models.b_file
        models_b = [cfg.models.b_file, *(s.b_file for s in cfg.chain)]
        models_c = [c for c in [cfg.models.c_file, *(s.c_file for s in cfg.chain)] if c]
        out = self.run_dir / f"{cfg.models.output}.{cfg.outputs.format}"
        if out.is_file() and not cfg.outputs.overwrite:  # a finished chain resumed again
            emit(Notice(message=f"{out} exists: the chain's final merge was written before"))
            return out
        chain = ChainRecipe(tuple(recipes), intermediate_dtype=cfg.outputs.dtype)
        report = await asyncio.to_thread(
            merge_chain,
            cfg.models.a_file,
            models_b,  # type: ignore[arg-type]  (checked by the config)
            models_c,
            chain,
            out,
            dtype=cfg.outputs.dtype,
            force=cfg.outputs.overwrite,
        )
        emit(OutputWritten(path=report.output, what="checkpoint"))
        return report.output


def _finished(folder: Path) -> bool:
    """Whether the step in ``folder`` ended as finished (its summary says so)."""
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        return StopReason(summary.get("reason")) in FINISHED
    except (OSError, ValueError, TypeError, AttributeError):
        return False


async def _give_back_model_a(endpoints: list[Endpoint], cfg: SearchConfig, emit: EventSink) -> None:
    """Every instance holds plain model A of step 1 again: a merge of A and B at weight 0 makes
    the bridge load A (A1111's ``sd_model_checkpoint`` option may still name A while an
    intermediate is loaded, so setting the option would not), then a restore frees the caches.
    Never raises: a warning says what to do."""
    zero = Weights(cfg.models.arch, dict.fromkeys(layout(cfg.models.arch).slots, 0.0))
    for e in endpoints:
        try:
            await e.client.bridge_merge(cfg.models.a, cfg.models.b, zero, model_c=cfg.models.c)
            await e.client.bridge_restore(free_caches=True)
        except AutombwError as exc:
            message = (
                f"{e.label}: could not load model A ({cfg.models.a}) again ({exc.message}); "
                "load it there"
            )
            log.warning("%s", message)
            emit(RunWarning(message=message))


async def _listed(e: Endpoint, name: str) -> bool:
    try:
        await e.client.find_checkpoint(name)
    except CheckpointNotLoaded:
        return False
    return True


async def _holds_pair(e: Endpoint, recipe: Recipe) -> bool:
    """Whether ``e``'s bridge holds ``recipe``'s A, B (and C) with its formula."""
    status = await e.client.bridge_status()
    if status.formula not in (None, recipe.formula.value):
        return False
    roles = [(status.model_a, recipe.model_a), (status.model_b, recipe.model_b)]
    roles.append((status.model_c, recipe.model_c))
    for held, name in roles:
        if held is None or name is None:
            if held is not None or name is not None:
                return False
            continue
        listed = await e.client.find_checkpoint(name)
        if _without_hash(listed.title) != _without_hash(held.title or ""):
            return False
    return True


def _without_hash(title: str) -> str:
    """A checkpoint title without its `` [hash]`` (A1111 adds it once the hash is known)."""
    return re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", title)


async def _merge_and_save(
    e: Endpoint, recipe: Recipe, cfg: SearchConfig, *, overwrite: bool
) -> None:
    """Save ``recipe``'s merge in ``e`` under its output name. The bridge saves from the
    files of the pair it holds: right after the step that pair is the recipe's and the save
    alone does; otherwise (a fresh WebUI on resume) a merge makes it the recipe's first."""
    try:
        if not await _holds_pair(e, recipe):
            await e.client.bridge_merge(
                recipe.model_a, recipe.model_b, recipe.weights, model_c=recipe.model_c
            )
        await e.client.bridge_save(
            recipe.output_name,
            recipe.weights,
            dtype=cfg.outputs.dtype,
            overwrite=overwrite,
            fmt=INTERMEDIATE_FORMAT,
        )
    except WebUIHTTPError as exc:
        if exc.kind != "OutputExists":
            raise
        raise AutombwError(
            f"{e.label}: a checkpoint named {recipe.output_name} already exists there, but "
            "not in the other instances",
            hint="remove it from that WebUI's model folder, or set outputs.overwrite: true",
        ) from exc
