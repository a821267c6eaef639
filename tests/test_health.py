"""Instance health (search/health.py): failures, parking, disabling, probe backoff, all-down.

Pure policy: a fake clock, no WebUI. The scheduler's use of it runs in test_scheduler_policy.py
(fake clients) and test_scheduler.py (simulated WebUIs).
"""

from __future__ import annotations

import pytest

from autombw_cli.errors import WebUIError
from autombw_cli.search.health import MIN_WAIT_S, InstanceHealth, ProbeBackoff, Verdict
from autombw_cli.search.work import Instance, SchedulerSettings
from autombw_cli.webui.errors import WebUIAuthError, WebUIServerError, WebUIUnreachable

SETTINGS = SchedulerSettings(
    park_after=3, probe_backoff_s=1.0, probe_backoff_max_s=5.0, all_down_after_s=60.0
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class NoClient:
    """Health never talks to a client; any call is a bug."""

    def __getattr__(self, name: str) -> None:
        raise AssertionError(f"health called the client's {name}")


def _health(n: int = 2) -> tuple[InstanceHealth, list[Instance], Clock]:
    clock = Clock()
    instances = [Instance(f"i{k}", NoClient()) for k in range(n)]
    return InstanceHealth(instances, SETTINGS, clock=clock), instances, clock


def _oom() -> WebUIError:
    return WebUIServerError("CUDA out of memory", status_code=500)


def test_failures_park_an_instance_only_when_consecutive() -> None:
    health, (a, _), clock = _health()
    assert health.failed(a, _oom()) is Verdict.KEEP
    assert health.failed(a, _oom()) is Verdict.KEEP
    health.succeeded(a)  # a render in between: the count starts again
    assert health.failed(a, _oom()) is Verdict.KEEP
    assert health.failed(a, _oom()) is Verdict.KEEP
    assert not a.parked
    clock.now = 123.0
    assert health.failed(a, _oom()) is Verdict.PARK
    assert a.parked and not a.disabled and a.parked_since == 123.0
    assert a.failures == 5 and a.consecutive_failures == 3
    assert a.last_error.endswith("CUDA out of memory")


def test_an_instance_that_does_not_answer_is_parked_at_once() -> None:
    health, (a, b), _ = _health()
    assert health.failed(a, WebUIUnreachable("connection refused")) is Verdict.PARK
    assert a.parked and not a.disabled
    assert health.healthy() == [b]


def test_a_setup_error_disables_the_instance() -> None:
    health, (a, _), clock = _health()
    clock.now = 7.0
    assert health.failed(a, WebUIAuthError("wrong password", status_code=401)) is Verdict.DISABLE
    assert a.disabled and a.parked and a.parked_since == 7.0
    assert a.consecutive_failures == 1  # one try was enough


def test_a_rejoined_instance_takes_work_again() -> None:
    health, (a, b), _ = _health()
    health.failed(a, WebUIUnreachable("down"))
    health.still_down(a, WebUIUnreachable("still refused"))
    assert a.parked and a.last_error.endswith("still refused")
    health.rejoined(a)
    assert not a.parked and a.consecutive_failures == 0
    assert health.healthy() == [a, b]
    assert health.failed(a, _oom()) is Verdict.KEEP  # counting starts from zero again


def test_probe_backoff_doubles_up_to_its_cap() -> None:
    backoff = ProbeBackoff(1.0, 5.0)
    assert [backoff.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert ProbeBackoff(8.0, 5.0).next_delay() == 8.0  # the first wait is as configured
    health, _, _ = _health()
    fresh = health.backoff()
    assert [fresh.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]


def test_all_down_counts_from_the_last_instance_parked() -> None:
    health, (a, b), clock = _health()
    health.failed(a, WebUIUnreachable("down"))
    clock.now += 1000.0  # one instance down for long: the run goes on
    assert not health.all_down_too_long()
    assert health.time_to_all_down() == SETTINGS.probe_backoff_max_s
    health.failed(b, WebUIUnreachable("down"))  # now every instance is down
    assert not health.all_down_too_long()
    assert health.time_to_all_down() == pytest.approx(60.0)
    clock.now += 59.0
    assert health.time_to_all_down() == pytest.approx(1.0)
    assert not health.all_down_too_long()
    clock.now += 1.0
    assert health.all_down_too_long()
    assert health.time_to_all_down() == MIN_WAIT_S  # never a zero or negative sleep
    health.rejoined(a)
    assert not health.all_down_too_long()


def test_health_needs_an_instance() -> None:
    with pytest.raises(ValueError, match="at least one instance"):
        InstanceHealth([], SETTINGS)
