"""The values and seams the scheduler works with: what a candidate, a rendered evaluation and
an outcome are, what it needs of a WebUI client, a scorer and a candidate source, and the
identical-image guard. Kept apart from the scheduler's control flow (``scheduler.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from autombw_cli.blocks import Weights
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.events import EventSink, RunWarning, WorkerState
from autombw_cli.search.prompt import PromptSpec

log = logging.getLogger(__name__)


# --- seams ---------------------------------------------------------------------------------
class MergeAnswer(Protocol):
    """What the scheduler reads of a bridge merge: the id that names it."""

    @property
    def merge_id(self) -> str: ...


class StatusAnswer(Protocol):
    """What a probe reads of the bridge status: that it has a version (the bridge answers)."""

    @property
    def version(self) -> str: ...


class RenderAnswer(Protocol):
    """What the scheduler reads of a txt2img answer (``webui.models.Txt2ImgResult`` has it)."""

    @property
    def images(self) -> Sequence[Image.Image]: ...

    @property
    def raw_images(self) -> Sequence[bytes]: ...

    @property
    def info(self) -> Mapping[str, Any]: ...  # A1111's info: "version" is the WebUI's

    @property
    def seeds(self) -> Sequence[int]: ...  # one per image when the WebUI says


class InstanceClient(Protocol):
    """The WebUI client methods the scheduler calls (``webui.client.WebUIClient`` has them;
    the policy tests pass a small fake)."""

    async def ping(self) -> object: ...

    async def bridge_status(self) -> StatusAnswer: ...

    async def ensure_merge_live(self, merge_id: str) -> object: ...  # raises on a lost merge

    async def bridge_merge(
        self,
        model_a: str,
        model_b: str,
        weights: Weights,
        *,
        cache_device: str = ...,
        model_c: str | None = ...,
        formula: str | None = ...,
    ) -> MergeAnswer: ...

    async def txt2img(self, body: Mapping[str, Any]) -> RenderAnswer: ...


@dataclass(frozen=True)
class Candidate:
    """A point to evaluate. ``trial`` is the optimizer's handle, opaque here."""

    number: int
    weights: Weights
    pass_index: int
    trial: Any = None


@dataclass(frozen=True)
class RenderedImage:
    spec: PromptSpec
    image: Image.Image
    raw: bytes
    seed: int | None


@dataclass(frozen=True)
class Outcome:
    """A rendered and scored candidate as the scheduler hands it to the source: its images and
    raw scores, not yet tallied (``evaluation`` makes the finished `Evaluation` of it)."""

    candidate: Candidate
    instance: str
    merge_id: str
    images: tuple[RenderedImage, ...]
    raw_scores: tuple[float, ...]  # one per image, as the scorer returned them
    merge_s: float
    generate_s: float
    score_s: float
    queue_s: float  # time the images waited for the scorer
    started_at: float
    finished_at: float
    attempts: int
    # an ensemble's raw scores per member label (one per image), for the journal
    member_scores: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    # pruned after its first images: the score the campaign estimated for it (None: complete)
    pruned_score: float | None = None

    def evaluation(self, score: float, payload_scores: Mapping[str, float]) -> Evaluation:
        """The finished evaluation, once its images are tallied into ``score``."""
        c = self.candidate
        return Evaluation(
            number=c.number,
            pass_index=c.pass_index,
            weights=c.weights,
            score=score,
            payload_scores=payload_scores,
            raw_scores=self.raw_scores,
            instance=self.instance,
            merge_id=self.merge_id,
            timings={
                "merge_s": self.merge_s,
                "generate_s": self.generate_s,
                "score_s": self.score_s,
                "total_s": self.finished_at - self.started_at,
            },
            timestamp=self.finished_at,
            member_scores=self.member_scores,
        )


class CandidateSource(Protocol):
    """Where candidates come from and where results go (the run's passes and optimizer).

    All three are called from one dedicated thread, one at a time, in order.
    ``next_candidate`` returns None when it has nothing to hand out right now; when it still
    returns None after every outstanding evaluation has come back, the search is over.
    """

    def next_candidate(self) -> Candidate | None: ...

    def complete(self, outcome: Outcome) -> None: ...

    def abandon(self, candidate: Candidate, reason: str) -> None: ...

    def judge_partial(self, outcome: Outcome) -> float | None: ...  # pruning's look (see there)


@dataclass(frozen=True)
class SchedulerSettings:
    max_attempts: int = 3  # tries per evaluation across instances before it is abandoned
    park_after: int = 3  # consecutive failures that park an instance
    probe_backoff_s: float = 1.0  # first wait before probing a parked instance
    probe_backoff_max_s: float = 30.0
    all_down_after_s: float = 60.0  # every instance down this long: stop the run
    scorer_batch_size: int = 8  # images per scorer call
    cache_device: str = "auto"
    identical_image_warnings: int = 3  # how many times to warn about identical images
    prefetch: bool = True  # ask for an instance's next candidate while it renders
    prune_after: int | None = None  # images scored before the source may prune (None: never)


@dataclass
class Instance:
    """One WebUI instance and what the scheduler knows about it."""

    label: str
    client: InstanceClient
    state: WorkerState = WorkerState.STARTING
    parked: bool = False
    disabled: bool = False  # parked for good (a setup problem probing cannot fix)
    parked_since: float = 0.0
    consecutive_failures: int = 0
    evaluations: int = 0
    failures: int = 0
    busy_s: float = 0.0  # time spent merging + generating + verifying
    first_start: float | None = None
    last_end: float | None = None
    last_eval_s: float | None = None
    last_error: str = ""
    webui_version: str | None = None
    prefetch: asyncio.Future[Any] | None = field(default=None, repr=False)


@dataclass
class Job:
    candidate: Candidate
    attempts: int = 0
    failed_on: set[str] = field(default_factory=set)


@dataclass
class Rendered:
    job: Job
    instance: str
    merge_id: str
    images: list[RenderedImage]
    merge_s: float
    generate_s: float
    started_at: float
    queued_at: float
    # the first images, scored while the rest rendered (pruning's look), and their members
    prescored: tuple[float, ...] = ()
    prescored_members: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    prescore_s: float = 0.0
    pruned_score: float | None = None  # the source pruned it after ``prescored``


class IdenticalImageGuard:
    """Warns loudly when different weights give byte-identical images: the merge is not being
    applied (auto-MBW-rt's "same score every iteration" failure).

    Compares against the images of the last ``window`` evaluations only, so its memory does not
    grow with the run (a merge that is not applied repeats the same images at once)."""

    def __init__(self, emit: EventSink, *, max_warnings: int = 3, window: int = 1024) -> None:
        self.emit = emit
        self.max_warnings = max_warnings
        self.window = window
        self._digests: OrderedDict[bytes, tuple[int, bytes]] = OrderedDict()
        self._warned = 0

    def check(self, r: Rendered) -> None:
        if any(ri.spec.seed == -1 for ri in r.images):
            return  # random seeds: identical images are impossible to judge
        h = hashlib.sha256()
        for ri in r.images:
            h.update(ri.image.tobytes())
        digest = h.digest()
        key = r.job.candidate.weights.key()
        seen = self._digests.get(digest)
        if seen is None:
            self._digests[digest] = (r.job.candidate.number, key)
            if len(self._digests) > self.window:
                self._digests.popitem(last=False)
            return
        if seen[1] == key or self._warned >= self.max_warnings:
            return
        self._warned += 1
        msg = (
            f"evaluations #{seen[0]} and #{r.job.candidate.number} (on {r.instance}) have "
            "different weights but byte-identical images: the merge is NOT being applied "
            "(check the bridge extension and that models A and B differ)"
        )
        log.warning(msg)
        self.emit(RunWarning(message=msg))
