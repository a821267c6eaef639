"""Instance health: the scheduler's policy for WebUI instances that fail.

Owns the rules, not the control flow: counting failures, parking an instance (after
``park_after`` consecutive failures, or at once when it does not answer), disabling it for good
on a setup error probing cannot fix (``WebUIError.needs_attention``), the probe backoff, and
when every instance has been down long enough to stop the run. The scheduler asks it and acts.
The state itself stays on each ``Instance`` (the run's summary reads it from there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from enum import StrEnum

from autombw_cli.errors import WebUIError
from autombw_cli.search.work import Instance, SchedulerSettings

log = logging.getLogger(__name__)

#: the shortest wait until the all-down deadline, so a prober never spins
MIN_WAIT_S = 0.05


class Verdict(StrEnum):
    """What one failure did to its instance."""

    KEEP = "keep"  # still takes work
    PARK = "park"  # out until a probe answers
    DISABLE = "disable"  # out for good: a setup problem (auth, no --api, no bridge, ...)


class ProbeBackoff:
    """The waits between probes of one parked instance: doubling from ``first`` up to
    ``most`` (the first wait is ``first`` even when it is larger)."""

    def __init__(self, first: float, most: float) -> None:
        self._next = first
        self._most = most

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(delay * 2, self._most)
        return delay


class InstanceHealth:
    """Failures, parking, disabling and the all-down deadline over a run's instances."""

    def __init__(
        self,
        instances: Sequence[Instance],
        settings: SchedulerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not instances:
            raise ValueError("instance health needs at least one instance")
        self.instances = list(instances)
        self.settings = settings
        self._clock = clock

    def healthy(self) -> list[Instance]:
        """The instances that take work now (not parked)."""
        return [i for i in self.instances if not i.parked]

    def failed(self, inst: Instance, exc: WebUIError) -> Verdict:
        """Count a failed evaluation on ``inst``; park or disable it when the rules say so."""
        inst.failures += 1
        inst.consecutive_failures += 1
        inst.last_error = exc.message
        log.warning("%s: evaluation failed: %s", inst.label, exc.message)
        if exc.needs_attention:
            # a setup problem (auth, no --api, no bridge, a refused request) repeats on every
            # try: take the instance out for good instead of probing it
            inst.disabled = True
            self._park(inst)
            return Verdict.DISABLE
        if exc.instance_down or inst.consecutive_failures >= self.settings.park_after:
            self._park(inst)
            return Verdict.PARK
        return Verdict.KEEP

    def succeeded(self, inst: Instance) -> None:
        """An evaluation rendered: failures must be consecutive to park."""
        inst.consecutive_failures = 0

    def still_down(self, inst: Instance, exc: WebUIError) -> None:
        """A probe of a parked instance failed."""
        inst.last_error = exc.message
        log.debug("%s: still down: %s", inst.label, exc.message)

    def rejoined(self, inst: Instance) -> None:
        """A probe answered: the instance takes work again."""
        inst.parked = False
        inst.consecutive_failures = 0
        log.warning("%s: back up, rejoining the search", inst.label)

    def backoff(self) -> ProbeBackoff:
        """A fresh backoff for one stretch of probing."""
        return ProbeBackoff(self.settings.probe_backoff_s, self.settings.probe_backoff_max_s)

    def all_down_too_long(self) -> bool:
        """Every instance parked, the last one for at least ``all_down_after_s``."""
        last = self._last_parked()
        return last is not None and self._clock() - last >= self.settings.all_down_after_s

    def time_to_all_down(self) -> float:
        """How long a prober may sleep: until the all-down deadline when every instance is
        parked (at least ``MIN_WAIT_S``), else ``probe_backoff_max_s``."""
        last = self._last_parked()
        if last is None:
            return self.settings.probe_backoff_max_s
        return max(MIN_WAIT_S, last + self.settings.all_down_after_s - self._clock())

    def _park(self, inst: Instance) -> None:
        inst.parked = True
        inst.parked_since = self._clock()

    def _last_parked(self) -> float | None:
        """When the last instance was parked, or None while one still takes work."""
        if not all(i.parked for i in self.instances):
            return None
        return max(i.parked_since for i in self.instances)
