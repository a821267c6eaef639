"""The scheduler: one asyncio worker per WebUI instance plus one scoring stage.

A worker loops: take a candidate (a retry first, else a new one from the source) → merge it
through the bridge → render every prompt → check the merge was still live → hand the images to
the scoring stage → take the next candidate at once. The scoring stage runs the (synchronous,
batched) scorer in its own thread and batches across workers; the optimizer and the journal run
in another single thread. So a WebUI never waits on scoring or on the optimizer.

Pruning (``settings.prune_after``): once a candidate has that many images, the worker scores
them in the scorer's thread and asks the source ``judge_partial``; told an estimate, it stops
rendering that candidate and hands the partial evaluation on (``Outcome.pruned_score``). The
scoring stage scores only the images a look did not.

Failures never become scores: a failed evaluation goes back to the retry queue (preferring
another instance) up to ``max_attempts``, then the source is told to abandon it. What a failure
does to its instance (parked, probed with backoff, disabled, every instance down for
``all_down_after_s`` → ``StopReason.ALL_DOWN``) is ``search/health.py``'s policy.

``Scheduler`` is the public face (``run``, ``request_stop``, ``busy_fractions``); everything
one run needs lives in a ``_Run`` that ``run()`` creates, and how far the run is towards its
end is one ``StopState`` (a ``RunPhase`` plus the stop reason or the fatal error). What the
scheduler calls on a WebUI client is the typed ``work.InstanceClient`` seam.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from PIL import Image

from autombw_cli.errors import AutombwError, ScorerError, WebUIError
from autombw_cli.scoring.protocol import MemberScorer, Scorer
from autombw_cli.search.events import (
    EvaluationFailed,
    EventSink,
    InstanceStateChanged,
    RunWarning,
    ScorerQueue,
    StopReason,
    WorkerState,
)
from autombw_cli.search.health import InstanceHealth, Verdict
from autombw_cli.search.work import (
    Candidate,
    CandidateSource,
    IdenticalImageGuard,
    Instance,
    InstanceClient,
    Job,
    Outcome,
    PromptSpec,
    Rendered,
    RenderedImage,
    SchedulerSettings,
)

__all__ = [
    "Candidate",
    "CandidateSource",
    "Instance",
    "InstanceClient",
    "Outcome",
    "PromptSpec",
    "RenderedImage",
    "RunPhase",
    "Scheduler",
    "SchedulerSettings",
    "StopState",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


# --- the stop state --------------------------------------------------------------------------
class RunPhase(StrEnum):
    """How far a run is towards its end."""

    RUNNING = "running"  # candidates are handed out
    STOPPING = "stopping"  # a stop was asked (or every instance is down): finish what is in flight
    OVER = "over"  # the source ran dry with nothing in flight
    FAILED = "failed"  # a fatal error (the scorer, a bug): cancel everything and raise it


class StopState:
    """A run's ``RunPhase`` with its stop reason (STOPPING) or fatal error (FAILED).

    A stop can be asked while RUNNING or OVER; the first one asked wins. A failure overrides
    everything."""

    def __init__(self) -> None:
        self.phase = RunPhase.RUNNING
        self.reason: StopReason | None = None
        self.error: BaseException | None = None

    def request(self, reason: StopReason) -> bool:
        """Ask the run to stop; False when it is already stopping or has failed."""
        if self.winding_down:
            return False
        self.phase = RunPhase.STOPPING
        self.reason = reason
        return True

    def finish(self) -> None:
        """The source ran dry with nothing in flight."""
        if self.phase is RunPhase.RUNNING:
            self.phase = RunPhase.OVER

    def fail(self, error: BaseException) -> None:
        self.phase = RunPhase.FAILED
        self.error = error

    @property
    def winding_down(self) -> bool:
        """No new work and no retries: a stop was asked or the run failed."""
        return self.phase in (RunPhase.STOPPING, RunPhase.FAILED)

    @property
    def ended(self) -> bool:
        """Anything but RUNNING: a parked instance stops probing."""
        return self.phase is not RunPhase.RUNNING


# --- the public face -------------------------------------------------------------------------
class Scheduler:
    """Runs a search's evaluations over a set of WebUI instances (see the module docstring)."""

    def __init__(
        self,
        instances: Sequence[Instance],
        scorer: Scorer,
        prompts: Sequence[PromptSpec],
        *,
        model_a: str,
        model_b: str,
        emit: EventSink,
        settings: SchedulerSettings | None = None,
        model_c: str | None = None,
        lora: bool = False,
    ) -> None:
        """``model_c``: B's base for an add-difference search (A + (B - C) * w; None: the
        weighted sum of A and B); ``lora``: B is a LoRA, each weight its block strength."""
        if not instances:
            raise ValueError("the scheduler needs at least one instance")
        if not prompts:
            raise ValueError("the scheduler needs at least one prompt")
        self.instances = list(instances)
        self.scorer = scorer
        self.prompts = list(prompts)
        self.model_a = model_a
        self.model_b = model_b
        self.model_c = model_c
        self.lora = lora
        self.emit = emit
        self.settings = settings or SchedulerSettings()
        self._stop = StopState()  # here, not in the run: a stop may be asked before run()
        self._active: _Run | None = None

    def request_stop(self, reason: StopReason = StopReason.INTERRUPTED) -> None:
        """Hand out no new candidates; evaluations in flight finish and are recorded."""
        if self._stop.request(reason):
            log.info("stopping (%s): finishing evaluations in flight", reason.value)
        if self._active is not None:
            asyncio.get_running_loop().create_task(self._active.notify())

    @property
    def stop_reason(self) -> StopReason | None:
        return self._stop.reason

    async def run(self, source: CandidateSource) -> StopReason | None:
        """Evaluate until the source runs dry, a stop is requested, or every instance is down.

        Returns the stop reason (None when the source simply ran dry). Raises the first fatal
        error (a scorer failure, a bug) after cancelling the workers.
        """
        self._active = _Run(self, source, self._stop)
        await self._active.execute()
        return self._stop.reason

    def busy_fractions(self) -> dict[str, float]:
        """Share of each instance's active span it spent merging/generating."""
        out = {}
        for inst in self.instances:
            if inst.first_start is None or inst.last_end is None:
                out[inst.label] = 0.0
                continue
            span = max(inst.last_end - inst.first_start, 1e-9)
            out[inst.label] = min(1.0, inst.busy_s / span)
        return out


# --- one run ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Look:
    """What pruning's look at a candidate's first images found (``done`` False: not looked)."""

    done: bool = False
    scores: tuple[float, ...] = ()
    members: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    score_s: float = 0.0
    pruned_score: float | None = None


class _Run:
    """Everything one ``Scheduler.run`` needs: the workers, the retry queue, the scoring stage
    and their two threads."""

    def __init__(self, sched: Scheduler, source: CandidateSource, stop: StopState) -> None:
        self.instances = sched.instances
        self.prompts = sched.prompts
        self.model_a = sched.model_a
        self.model_b = sched.model_b
        # add difference / LoRA only: clients (and test fakes) without them know no such argument
        self.merge_options: dict[str, str] = {}
        if sched.model_c is not None:
            self.merge_options["model_c"] = sched.model_c
        if sched.lora:
            self.merge_options["formula"] = "lora"
        self.emit = sched.emit
        self.settings = sched.settings
        self.scorer = sched.scorer
        # the optional capability: an ensemble's raw scores per member go to the journal
        self.members = sched.scorer if isinstance(sched.scorer, MemberScorer) else None
        self.source = source
        self.stop = stop
        self.health = InstanceHealth(self.instances, self.settings)
        self.guard = IdenticalImageGuard(
            self.emit, max_warnings=self.settings.identical_image_warnings
        )
        self.cond = asyncio.Condition()
        self.score_queue: asyncio.Queue[Rendered | None] = asyncio.Queue()
        self.opt_pool = ThreadPoolExecutor(1, thread_name_prefix="autombw-optimizer")
        self.score_pool = ThreadPoolExecutor(1, thread_name_prefix="autombw-scorer")
        self.retries: list[Job] = []
        self.outstanding = 0  # candidates handed out (or reserved by a prefetch), not yet back
        self.scoring_depth = 0

    async def execute(self) -> None:
        for inst in self.instances:
            if not inst.parked:
                self._set_state(inst, WorkerState.IDLE)
        scoring = asyncio.create_task(self._scoring_loop(), name="autombw-scoring")
        workers = [
            asyncio.create_task(self._worker_loop(inst), name=f"autombw-worker-{inst.label}")
            for inst in self.instances
        ]
        try:
            results = await asyncio.gather(*workers, return_exceptions=True)
            async with self.cond:
                await self._abandon_retries("every instance is down")
            await self.score_queue.put(None)  # nothing more will come: let scoring finish
            await scoring
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r
            if self.stop.error is not None:
                raise self.stop.error
        except BaseException:
            for t in [*workers, scoring]:
                t.cancel()
            await asyncio.gather(*workers, scoring, return_exceptions=True)
            self.opt_pool.shutdown(wait=False, cancel_futures=True)
            self.score_pool.shutdown(wait=False, cancel_futures=True)
            raise
        self.opt_pool.shutdown(wait=True)
        self.score_pool.shutdown(wait=True)

    async def notify(self) -> None:
        async with self.cond:
            self.cond.notify_all()

    # --- candidates ----------------------------------------------------------------------
    async def _call_source(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.opt_pool, fn, *args)

    def _take_retry(self, inst: Instance) -> Job | None:
        healthy = self.health.healthy()
        for pos, job in enumerate(self.retries):
            # another instance first; the same one only when it is the only one left
            if inst.label not in job.failed_on or all(i.label in job.failed_on for i in healthy):
                return self.retries.pop(pos)
        return None

    async def _next_job(self, inst: Instance) -> Job | None:
        async with self.cond:
            while True:
                if self.stop.phase in (RunPhase.FAILED, RunPhase.OVER):
                    await self._drop_prefetch(inst, "the search is over")
                    return None
                if self.stop.phase is RunPhase.STOPPING:
                    await self._drop_prefetch(inst, "the run is stopping")
                    await self._abandon_retries("the run is stopping")
                    return None
                job = self._take_retry(inst)
                if job is not None:
                    return job
                if inst.prefetch is not None:
                    fut, inst.prefetch = inst.prefetch, None
                    cand = await fut
                    if cand is not None:
                        return Job(cand)  # counted in outstanding when it was asked
                    self.outstanding -= 1
                    self.cond.notify_all()
                cand = await self._call_source(self.source.next_candidate)
                if cand is not None:
                    self.outstanding += 1
                    return Job(cand)
                if self.outstanding == 0:
                    self.stop.finish()  # nothing in flight and nothing new: the search is done
                    self.cond.notify_all()
                    return None
                await self.cond.wait()

    def _start_prefetch(self, inst: Instance) -> None:
        """Ask the source for this instance's next candidate while it renders the current one,
        so a slow optimizer never keeps a WebUI waiting."""
        if not self.settings.prefetch or inst.prefetch is not None or self.stop.winding_down:
            return
        if self.retries:
            return
        self.outstanding += 1  # reserved now, so nobody declares the search over meanwhile
        loop = asyncio.get_running_loop()
        inst.prefetch = loop.run_in_executor(self.opt_pool, self.source.next_candidate)

    async def _drop_prefetch(self, inst: Instance, reason: str, *, hand_over: bool = False) -> None:
        """Resolve a pending prefetch: hand its candidate to another instance (``hand_over``)
        or give it back to the source; release the reservation if there was none."""
        if inst.prefetch is None:
            return
        fut, inst.prefetch = inst.prefetch, None
        cand = await fut
        if cand is None:
            self.outstanding -= 1
        elif hand_over:
            self.retries.append(Job(cand))
        else:
            await self._call_source(self.source.abandon, cand, reason)
            self.outstanding -= 1
        self.cond.notify_all()

    async def _abandon_retries(self, reason: str) -> None:
        """Give up the evaluations waiting for a retry (caller holds the condition)."""
        while self.retries:
            job = self.retries.pop()
            await self._call_source(self.source.abandon, job.candidate, reason)
            self.outstanding -= 1
        self.cond.notify_all()

    async def _finish_job(self) -> None:
        async with self.cond:
            self.outstanding -= 1
            self.cond.notify_all()

    async def _requeue_or_abandon(self, inst: Instance, job: Job, error: str) -> None:
        job.failed_on.add(inst.label)
        retry = job.attempts < self.settings.max_attempts and not self.stop.winding_down
        self.emit(
            EvaluationFailed(
                number=job.candidate.number,
                instance=inst.label,
                attempt=job.attempts,
                error=error,
                will_retry=retry,
            )
        )
        if retry:
            async with self.cond:
                self.retries.append(job)
                self.cond.notify_all()
            return
        await self._call_source(self.source.abandon, job.candidate, error)
        await self._finish_job()

    # --- workers -------------------------------------------------------------------------
    async def _worker_loop(self, inst: Instance) -> None:
        while True:
            if inst.parked and inst.prefetch is not None:
                async with self.cond:
                    await self._drop_prefetch(inst, "instance down", hand_over=True)
            if inst.parked and not await self._probe_until_healthy(inst):
                self._set_state(inst, WorkerState.DOWN)
                return
            job = await self._next_job(inst)
            if job is None:
                self._set_state(inst, WorkerState.DONE)
                return
            job.attempts += 1
            try:
                rendered = await self._render(inst, job)
            except WebUIError as exc:
                self._failed(inst, exc)
                await self._requeue_or_abandon(inst, job, exc.message)
                continue
            self.health.succeeded(inst)
            inst.evaluations += 1
            self._set_state(inst, WorkerState.SCORING)
            self.scoring_depth += 1
            await self.score_queue.put(rendered)
            self.emit(ScorerQueue(depth=self.scoring_depth))

    async def _render(self, inst: Instance, job: Job) -> Rendered:
        client = inst.client
        started = time.monotonic()
        if inst.first_start is None:
            inst.first_start = started
        try:
            self._set_state(inst, WorkerState.MERGING, f"#{job.candidate.number}")
            merge = await client.bridge_merge(
                self.model_a,
                self.model_b,
                job.candidate.weights,
                cache_device=self.settings.cache_device,
                **self.merge_options,
            )
            merged = time.monotonic()
            self._start_prefetch(inst)
            self._set_state(inst, WorkerState.GENERATING, f"#{job.candidate.number}")
            images: list[RenderedImage] = []
            look = _Look()
            for spec in self.prompts:
                after = self.settings.prune_after
                if after is not None and not look.done and len(images) >= after:
                    look = await self._look(job, inst, merge.merge_id, images, merged)
                    if look.pruned_score is not None:
                        break  # clearly worse than the best: the rest is not rendered
                result = await client.txt2img(spec.body)
                if result.info.get("version"):
                    inst.webui_version = str(result.info["version"])  # A1111 says it per render
                seeds = list(result.seeds)
                for k, (img, raw) in enumerate(zip(result.images, result.raw_images, strict=True)):
                    seed = seeds[k] if k < len(seeds) else None
                    images.append(RenderedImage(spec, img, raw, seed))
            # a WebUI that reloaded its checkpoint mid-way rendered A, not this merge
            await client.ensure_merge_live(merge.merge_id)
            if not images:
                raise WebUIError("txt2img returned no images", instance=inst.label)
        finally:
            ended = time.monotonic()
            inst.busy_s += ended - started
            inst.last_end = ended
        inst.last_eval_s = ended - started
        return Rendered(
            job=job,
            instance=inst.label,
            merge_id=merge.merge_id,
            images=images,
            merge_s=merged - started,
            generate_s=ended - merged,
            started_at=time.time() - (ended - started),
            queued_at=ended,
            prescored=look.scores,
            prescored_members=look.members,
            prescore_s=look.score_s,
            pruned_score=look.pruned_score,
        )

    async def _look(
        self,
        job: Job,
        inst: Instance,
        merge_id: str,
        images: list[RenderedImage],
        merged: float,
    ) -> _Look:
        """Pruning's one look: score the images so far (in the scorer's thread) and ask the
        source whether to stop rendering this candidate."""
        self._set_state(inst, WorkerState.SCORING, f"#{job.candidate.number} (pruning look)")
        t0 = time.monotonic()
        try:
            scores, members = await self._run_scorer(
                [ri.image for ri in images], [ri.spec.prompt for ri in images]
            )
        except AutombwError as exc:  # the scorer failed: the run fails, as in the scoring stage
            self.stop.fail(exc)
            await self.notify()
            raise
        score_s = time.monotonic() - t0
        raw = tuple(float(v) for v in scores)
        partial = Outcome(
            candidate=job.candidate,
            instance=inst.label,
            merge_id=merge_id,
            images=tuple(images),
            raw_scores=raw,
            merge_s=0.0,
            generate_s=time.monotonic() - merged,
            score_s=score_s,
            queue_s=0.0,
            started_at=time.time(),
            finished_at=time.time(),
            attempts=job.attempts,
        )
        pruned = await self._call_source(self.source.judge_partial, partial)
        self._set_state(inst, WorkerState.GENERATING, f"#{job.candidate.number}")
        member_raw = {k: tuple(float(x) for x in v) for k, v in members.items()}
        return _Look(True, raw, member_raw, score_s, pruned)

    def _failed(self, inst: Instance, exc: WebUIError) -> None:
        verdict = self.health.failed(inst, exc)
        if verdict is Verdict.DISABLE:
            self._set_state(inst, WorkerState.DOWN, f"needs attention: {exc.message}")
        elif verdict is Verdict.PARK:
            self._set_state(inst, WorkerState.DOWN, exc.message)
        else:
            self._set_state(inst, WorkerState.IDLE, exc.message)

    async def _probe_until_healthy(self, inst: Instance) -> bool:
        """Probe a parked instance with backoff; True once it answers, False when the run ends
        (stop requested, search over, or every instance down for too long)."""
        backoff = self.health.backoff()
        while True:
            if self.health.all_down_too_long():
                if self.stop.request(StopReason.ALL_DOWN):
                    self.emit(RunWarning(message="every WebUI instance is down; stopping the run"))
                    await self.notify()
                return False
            if self.stop.ended:
                return False
            if inst.disabled:  # never probed: wait for the run to end
                await self._sleep_or_wake(self.health.time_to_all_down())
                continue
            await self._sleep_or_wake(min(backoff.next_delay(), self.health.time_to_all_down()))
            if self.stop.winding_down:
                return False
            try:
                client = inst.client
                await client.ping()
                _ = (await client.bridge_status()).version
            except WebUIError as exc:
                self.health.still_down(inst, exc)
                continue
            self.health.rejoined(inst)
            self._set_state(inst, WorkerState.IDLE, "rejoined")
            return True

    async def _sleep_or_wake(self, seconds: float) -> None:
        """Sleep ``seconds``, but wake early when the run stops, fails or is over."""
        deadline = time.monotonic() + seconds
        async with self.cond:
            while not self.stop.ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    await asyncio.wait_for(self.cond.wait(), timeout=remaining)
                except TimeoutError:
                    return

    # --- scoring -------------------------------------------------------------------------
    async def _scoring_loop(self) -> None:
        closed = False
        while not closed:
            first = await self.score_queue.get()
            if first is None:
                break
            batch = [first]
            n_images = len(first.images)
            while n_images < self.settings.scorer_batch_size and not self.score_queue.empty():
                item = self.score_queue.get_nowait()
                if item is None:
                    closed = True
                    break
                batch.append(item)
                n_images += len(item.images)
            try:
                await self._score_batch(batch)
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    self.stop.fail(exc)
                    await self.notify()
                raise
        # drain: anything still queued after the sentinel (should not happen)
        while not self.score_queue.empty():
            item = self.score_queue.get_nowait()
            if item is not None:
                await self._score_batch([item])

    async def _score_batch(self, batch: list[Rendered]) -> None:
        # the images a pruning look scored already are not scored again
        images = [ri.image for r in batch for ri in r.images[len(r.prescored) :]]
        prompts = [ri.spec.prompt for r in batch for ri in r.images[len(r.prescored) :]]
        t0 = time.monotonic()
        scores, members = await self._run_scorer(images, prompts)
        score_s = time.monotonic() - t0
        pos = 0
        for r in batch:
            n = len(r.images) - len(r.prescored)
            raw = r.prescored + tuple(float(s) for s in scores[pos : pos + n])
            member_raw = {
                k: tuple(r.prescored_members.get(k, ())) + tuple(members.get(k, [])[pos : pos + n])
                for k in dict.fromkeys([*r.prescored_members, *members])  # in a stable order
            }
            pos += n
            self.guard.check(r)
            outcome = Outcome(
                candidate=r.job.candidate,
                instance=r.instance,
                merge_id=r.merge_id,
                images=tuple(r.images),
                raw_scores=raw,
                merge_s=r.merge_s,
                generate_s=r.generate_s,
                score_s=score_s * n / max(len(images), 1) + r.prescore_s,
                queue_s=t0 - r.queued_at,
                started_at=r.started_at,
                finished_at=time.time(),
                attempts=r.job.attempts,
                member_scores=member_raw,
                pruned_score=r.pruned_score,
            )
            await self._call_source(self.source.complete, outcome)
            self.scoring_depth -= 1
            inst = next(i for i in self.instances if i.label == r.instance)
            if inst.state is WorkerState.SCORING:
                self._set_state(inst, WorkerState.IDLE)
            await self._finish_job()
        self.emit(ScorerQueue(depth=self.scoring_depth))

    async def _run_scorer(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], dict[str, list[float]]]:
        """`_score_all` in the scorer's thread; a failure of the scorer's own code becomes a
        `ScorerError` (the batches of the scoring stage and pruning's look both score here)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.score_pool, self._score_all, images, prompts)
        except AutombwError:
            raise
        except Exception as exc:
            raise ScorerError(f"the scorer {self.scorer.name!r} failed: {exc}") from exc

    def _score_all(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], dict[str, list[float]]]:
        """Scores per image, and an ensemble's raw scores per member (empty otherwise)."""
        size = max(1, self.settings.scorer_batch_size)
        out: list[float] = []
        members: dict[str, list[float]] = {}
        for start in range(0, len(images), size):
            batch, texts = images[start : start + size], prompts[start : start + size]
            if self.members is not None:
                chunk, raw = self.members.score_members(batch, texts)
                for label, values in raw.items():
                    members.setdefault(label, []).extend(float(v) for v in values)
            else:
                chunk = self.scorer.score(batch, texts)
            if len(chunk) != len(batch):
                raise ScorerError(
                    f"the scorer {self.scorer.name!r} returned {len(chunk)} scores for "
                    f"{len(batch)} images"
                )
            out.extend(chunk)
        return out, members

    # --- state -------------------------------------------------------------------------
    def _set_state(self, inst: Instance, state: WorkerState, detail: str = "") -> None:
        if inst.state is state and not detail:
            return
        inst.state = state
        self.emit(InstanceStateChanged(instance=inst.label, state=state, detail=detail))
