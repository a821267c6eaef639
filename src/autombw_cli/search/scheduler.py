"""The scheduler: one asyncio worker per WebUI instance plus one scoring stage.

A worker loops: take a candidate (a retry first, else a new one from the source) → merge it
through the bridge → render every prompt → check the merge was still live → hand the images to
the scoring stage → take the next candidate at once. The scoring stage runs the (synchronous,
batched) scorer in its own thread and batches across workers; the optimizer and the journal run
in another single thread. So a WebUI never waits on scoring or on the optimizer.

Failures never become scores: a failed evaluation goes back to the retry queue (preferring
another instance) up to ``max_attempts``, then the source is told to abandon it. An instance
that fails ``park_after`` times in a row, or is unreachable, is parked and probed with backoff;
it rejoins once it answers. When every instance stays down for ``all_down_after_s`` the run
stops (``StopReason.ALL_DOWN``) with what it has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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
    "Scheduler",
    "SchedulerSettings",
]

log = logging.getLogger(__name__)


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
    ) -> None:
        if not instances:
            raise ValueError("the scheduler needs at least one instance")
        if not prompts:
            raise ValueError("the scheduler needs at least one prompt")
        self.instances = list(instances)
        self.scorer = scorer
        # the optional capability: an ensemble's raw scores per member go to the journal
        self._members: MemberScorer | None = scorer if isinstance(scorer, MemberScorer) else None
        self.prompts = list(prompts)
        self.model_a = model_a
        self.model_b = model_b
        self.emit = emit
        self.settings = settings or SchedulerSettings()
        self._stopping = False
        self._stop_reason: StopReason | None = None
        self._retries: list[Job] = []
        self._outstanding = 0
        self._cond: asyncio.Condition | None = None
        self._score_queue: asyncio.Queue[Rendered | None] | None = None
        self._fatal: BaseException | None = None
        self._guard = IdenticalImageGuard(emit, max_warnings=self.settings.identical_image_warnings)
        self._opt_pool: ThreadPoolExecutor | None = None
        self._score_pool: ThreadPoolExecutor | None = None
        self._source: CandidateSource | None = None
        self._scoring_depth = 0
        self._over = False

    # --- public --------------------------------------------------------------------------
    def request_stop(self, reason: StopReason = StopReason.INTERRUPTED) -> None:
        """Hand out no new candidates; evaluations in flight finish and are recorded."""
        if not self._stopping:
            self._stopping = True
            self._stop_reason = reason
            log.info("stopping (%s): finishing evaluations in flight", reason.value)
        if self._cond is not None:
            asyncio.get_running_loop().create_task(self._notify())

    @property
    def stop_reason(self) -> StopReason | None:
        return self._stop_reason

    async def run(self, source: CandidateSource) -> StopReason | None:
        """Evaluate until the source runs dry, a stop is requested, or every instance is down.

        Returns the stop reason (None when the source simply ran dry). Raises the first fatal
        error (a scorer failure, a bug) after cancelling the workers.
        """
        self._source = source
        self._cond = asyncio.Condition()
        self._score_queue = asyncio.Queue()
        self._opt_pool = ThreadPoolExecutor(1, thread_name_prefix="autombw-optimizer")
        self._score_pool = ThreadPoolExecutor(1, thread_name_prefix="autombw-scorer")
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
            async with self._cond:
                await self._abandon_retries("every instance is down")
            await self._score_queue.put(None)  # nothing more will come: let scoring finish
            await scoring
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r
            if self._fatal is not None:
                raise self._fatal
        except BaseException:
            for t in [*workers, scoring]:
                t.cancel()
            await asyncio.gather(*workers, scoring, return_exceptions=True)
            self._opt_pool.shutdown(wait=False, cancel_futures=True)
            self._score_pool.shutdown(wait=False, cancel_futures=True)
            raise
        self._opt_pool.shutdown(wait=True)
        self._score_pool.shutdown(wait=True)
        return self._stop_reason

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

    # --- candidates ----------------------------------------------------------------------
    async def _notify(self) -> None:
        assert self._cond is not None
        async with self._cond:
            self._cond.notify_all()

    async def _call_source(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._opt_pool, fn, *args)

    def _take_retry(self, inst: Instance) -> Job | None:
        healthy = [i for i in self.instances if not i.parked]
        for pos, job in enumerate(self._retries):
            # another instance first; the same one only when it is the only one left
            if inst.label not in job.failed_on or all(i.label in job.failed_on for i in healthy):
                return self._retries.pop(pos)
        return None

    async def _next_job(self, inst: Instance) -> Job | None:
        assert self._cond is not None and self._source is not None
        async with self._cond:
            while True:
                if self._fatal is not None or self._over:
                    await self._drop_prefetch(inst, "the search is over")
                    return None
                if self._stopping:
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
                        return Job(cand)  # counted in _outstanding when it was asked
                    self._outstanding -= 1
                    self._cond.notify_all()
                cand = await self._call_source(self._source.next_candidate)
                if cand is not None:
                    self._outstanding += 1
                    return Job(cand)
                if self._outstanding == 0:
                    self._over = True  # nothing in flight and nothing new: the search is done
                    self._cond.notify_all()
                    return None
                await self._cond.wait()

    def _start_prefetch(self, inst: Instance) -> None:
        """Ask the source for this instance's next candidate while it renders the current one,
        so a slow optimizer never keeps a WebUI waiting."""
        if not self.settings.prefetch or inst.prefetch is not None or self._stopping:
            return
        if self._retries or self._source is None:
            return
        self._outstanding += 1  # reserved now, so nobody declares the search over meanwhile
        loop = asyncio.get_running_loop()
        inst.prefetch = loop.run_in_executor(self._opt_pool, self._source.next_candidate)

    async def _drop_prefetch(self, inst: Instance, reason: str, *, hand_over: bool = False) -> None:
        """Resolve a pending prefetch: hand its candidate to another instance (``hand_over``)
        or give it back to the source; release the reservation if there was none."""
        assert self._cond is not None and self._source is not None
        if inst.prefetch is None:
            return
        fut, inst.prefetch = inst.prefetch, None
        cand = await fut
        if cand is None:
            self._outstanding -= 1
        elif hand_over:
            self._retries.append(Job(cand))
        else:
            await self._call_source(self._source.abandon, cand, reason)
            self._outstanding -= 1
        self._cond.notify_all()

    async def _abandon_retries(self, reason: str) -> None:
        """Give up the evaluations waiting for a retry (caller holds the condition)."""
        assert self._cond is not None and self._source is not None
        while self._retries:
            job = self._retries.pop()
            await self._call_source(self._source.abandon, job.candidate, reason)
            self._outstanding -= 1
        self._cond.notify_all()

    async def _finish_job(self) -> None:
        assert self._cond is not None
        async with self._cond:
            self._outstanding -= 1
            self._cond.notify_all()

    async def _requeue_or_abandon(self, inst: Instance, job: Job, error: str) -> None:
        assert self._cond is not None and self._source is not None
        job.failed_on.add(inst.label)
        retry = job.attempts < self.settings.max_attempts and not self._stopping
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
            async with self._cond:
                self._retries.append(job)
                self._cond.notify_all()
            return
        await self._call_source(self._source.abandon, job.candidate, error)
        await self._finish_job()

    # --- workers -------------------------------------------------------------------------
    async def _worker_loop(self, inst: Instance) -> None:
        while True:
            if inst.parked and inst.prefetch is not None:
                assert self._cond is not None
                async with self._cond:
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
                self._record_failure(inst, exc)
                await self._requeue_or_abandon(inst, job, exc.message)
                continue
            except asyncio.CancelledError:
                raise
            inst.consecutive_failures = 0
            inst.evaluations += 1
            self._set_state(inst, WorkerState.SCORING)
            self._scoring_depth += 1
            assert self._score_queue is not None
            await self._score_queue.put(rendered)
            self.emit(ScorerQueue(depth=self._scoring_depth))

    async def _render(self, inst: Instance, job: Job) -> Rendered:
        started = time.monotonic()
        if inst.first_start is None:
            inst.first_start = started
        try:
            self._set_state(inst, WorkerState.MERGING, f"#{job.candidate.number}")
            merge = await inst.client.bridge_merge(
                self.model_a,
                self.model_b,
                job.candidate.weights,
                cache_device=self.settings.cache_device,
            )
            merged = time.monotonic()
            self._start_prefetch(inst)
            self._set_state(inst, WorkerState.GENERATING, f"#{job.candidate.number}")
            images: list[RenderedImage] = []
            for spec in self.prompts:
                result = await inst.client.txt2img(spec.body)
                info = getattr(result, "info", None)
                if isinstance(info, dict) and info.get("version"):
                    inst.webui_version = str(info["version"])  # A1111 reports it per render
                seeds = list(getattr(result, "seeds", []) or [])
                for k, (img, raw) in enumerate(zip(result.images, result.raw_images, strict=True)):
                    seed = seeds[k] if k < len(seeds) else None
                    images.append(RenderedImage(spec, img, raw, seed))
            # a WebUI that reloaded its checkpoint mid-way rendered A, not this merge
            await inst.client.ensure_merge_live(merge.merge_id)
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
        )

    def _record_failure(self, inst: Instance, exc: WebUIError) -> None:
        inst.failures += 1
        inst.consecutive_failures += 1
        inst.last_error = exc.message
        log.warning("%s: evaluation failed: %s", inst.label, exc.message)
        if exc.needs_attention:
            # a setup problem (auth, no --api, no bridge, a refused request) repeats on every
            # try: take the instance out for good instead of probing it
            inst.disabled = True
            inst.parked = True
            inst.parked_since = time.monotonic()
            self._set_state(inst, WorkerState.DOWN, f"needs attention: {exc.message}")
            return
        if exc.instance_down or inst.consecutive_failures >= self.settings.park_after:
            inst.parked = True
            inst.parked_since = time.monotonic()
            self._set_state(inst, WorkerState.DOWN, exc.message)
        else:
            self._set_state(inst, WorkerState.IDLE, exc.message)

    async def _probe_until_healthy(self, inst: Instance) -> bool:
        """Probe a parked instance with backoff; True once it answers, False when the run ends
        (stop requested, search over, or every instance down for too long)."""
        delay = self.settings.probe_backoff_s
        while True:
            if self._all_down_too_long():
                if not self._stopping:
                    self.emit(RunWarning(message="every WebUI instance is down; stopping the run"))
                    self._stopping = True
                    self._stop_reason = StopReason.ALL_DOWN
                    await self._notify()
                return False
            if self._stopping or self._fatal is not None or self._search_over():
                return False
            if inst.disabled:
                await self._sleep_or_wake(self._time_to_all_down())
                continue
            await self._sleep_or_wake(min(delay, self._time_to_all_down()))
            delay = min(delay * 2, self.settings.probe_backoff_max_s)
            if self._stopping or self._fatal is not None:
                return False
            try:
                await inst.client.ping()
                status = await inst.client.bridge_status()
                _ = status.version
            except WebUIError as exc:
                inst.last_error = exc.message
                log.debug("%s: still down: %s", inst.label, exc.message)
                continue
            inst.parked = False
            inst.consecutive_failures = 0
            log.warning("%s: back up, rejoining the search", inst.label)
            self._set_state(inst, WorkerState.IDLE, "rejoined")
            return True

    def _search_over(self) -> bool:
        return self._over

    def _time_to_all_down(self) -> float:
        if not all(i.parked for i in self.instances):
            return self.settings.probe_backoff_max_s
        last = max(i.parked_since for i in self.instances)
        return max(0.05, last + self.settings.all_down_after_s - time.monotonic())

    def _all_down_too_long(self) -> bool:
        if not all(i.parked for i in self.instances):
            return False
        last = max(i.parked_since for i in self.instances)
        return time.monotonic() - last >= self.settings.all_down_after_s

    async def _sleep_or_wake(self, seconds: float) -> None:
        """Sleep ``seconds``, but wake early when the run stops, fails or is over."""
        assert self._cond is not None
        deadline = time.monotonic() + seconds
        async with self._cond:
            while not (self._stopping or self._over or self._fatal is not None):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    await asyncio.wait_for(self._cond.wait(), timeout=remaining)
                except TimeoutError:
                    return

    # --- scoring -------------------------------------------------------------------------
    async def _scoring_loop(self) -> None:
        assert self._score_queue is not None
        closed = False
        while not closed:
            first = await self._score_queue.get()
            if first is None:
                break
            batch = [first]
            n_images = len(first.images)
            while n_images < self.settings.scorer_batch_size and not self._score_queue.empty():
                item = self._score_queue.get_nowait()
                if item is None:
                    closed = True
                    break
                batch.append(item)
                n_images += len(item.images)
            try:
                await self._score_batch(batch)
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    self._fatal = exc
                    self._stopping = True
                    await self._notify()
                raise
        # drain: anything still queued after the sentinel (should not happen)
        while not self._score_queue.empty():
            item = self._score_queue.get_nowait()
            if item is not None:
                await self._score_batch([item])

    async def _score_batch(self, batch: list[Rendered]) -> None:
        images = [ri.image for r in batch for ri in r.images]
        prompts = [ri.spec.prompt for r in batch for ri in r.images]
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        try:
            scores, members = await loop.run_in_executor(
                self._score_pool, self._score_all, images, prompts
            )
        except AutombwError:
            raise
        except Exception as exc:
            raise ScorerError(f"the scorer {self.scorer.name!r} failed: {exc}") from exc
        score_s = time.monotonic() - t0
        pos = 0
        for r in batch:
            n = len(r.images)
            raw = tuple(float(s) for s in scores[pos : pos + n])
            member_raw = {k: tuple(v[pos : pos + n]) for k, v in members.items()}
            pos += n
            self._guard.check(r)
            outcome = Outcome(
                candidate=r.job.candidate,
                instance=r.instance,
                merge_id=r.merge_id,
                images=tuple(r.images),
                raw_scores=raw,
                merge_s=r.merge_s,
                generate_s=r.generate_s,
                score_s=score_s * n / max(len(images), 1),
                queue_s=t0 - r.queued_at,
                started_at=r.started_at,
                finished_at=time.time(),
                attempts=r.job.attempts,
                member_scores=member_raw,
            )
            assert self._source is not None
            await self._call_source(self._source.complete, outcome)
            self._scoring_depth -= 1
            inst = next(i for i in self.instances if i.label == r.instance)
            if inst.state is WorkerState.SCORING:
                self._set_state(inst, WorkerState.IDLE)
            await self._finish_job()
        self.emit(ScorerQueue(depth=self._scoring_depth))

    def _score_all(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], dict[str, list[float]]]:
        """Scores per image, and an ensemble's raw scores per member (empty otherwise)."""
        size = max(1, self.settings.scorer_batch_size)
        out: list[float] = []
        members: dict[str, list[float]] = {}
        for start in range(0, len(images), size):
            batch, texts = images[start : start + size], prompts[start : start + size]
            if self._members is not None:
                chunk, raw = self._members.score_members(batch, texts)
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
