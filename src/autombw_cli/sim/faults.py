"""Faults the simulated WebUI produces on demand (for reliability tests and demos).

A `FaultPlan` is a frozen value; the server holds the current one and swaps it atomically
(`SimulatedWebUI.set_faults`, ``POST /sim/faults``, or ``--fault name=value`` on the command
line). Counters are per server: "every Nth" counts txt2img requests since the server started.

| name | value | effect on txt2img |
|---|---|---|
| ``oom-every`` | N | every Nth answers 500 with A1111's CUDA out-of-memory error |
| ``drop-every`` | N | every Nth: the connection is cut mid-answer (truncated body) |
| ``stall-every`` | N | every Nth stops making progress for ``stall-seconds`` first |
| ``stall-seconds`` | S | length of a stall (default 30) |
| ``restart-every`` | N | every Nth: the WebUI "restarts" (model and merge dropped, the |
| | | bridge starts empty) and the connection is cut |
| ``refuse-auth`` | (flag) | every /sdapi request answers 401, whatever the credentials |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from autombw_cli.errors import ConfigError

OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity; "
    "20.12 GiB already allocated; 1.02 GiB free; 21.50 GiB reserved in total by PyTorch) "
    "If reserved memory is >> allocated memory try setting max_split_size_mb to avoid "
    "fragmentation."
)


@dataclass(frozen=True)
class FaultPlan:
    oom_every: int = 0
    drop_every: int = 0
    stall_every: int = 0
    stall_seconds: float = 30.0
    restart_every: int = 0
    refuse_auth: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "refuse_auth":
                if not isinstance(v, bool):
                    raise ConfigError(f"fault {_cli_name(f.name)} must be true or false")
            elif isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ConfigError(f"fault {_cli_name(f.name)} must be a number >= 0, not {v!r}")

    def updated(self, changes: Mapping[str, Any]) -> FaultPlan:
        known = {f.name for f in dataclasses.fields(self)}
        clean: dict[str, Any] = {}
        for raw, value in changes.items():
            name = raw.replace("-", "_")
            if name not in known:
                raise ConfigError(
                    f"unknown fault {raw!r}",
                    hint=f"known: {', '.join(_cli_name(k) for k in sorted(known))}",
                )
            clean[name] = value
        return dataclasses.replace(self, **clean)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def hits(every: int, count: int) -> bool:
        return every > 0 and count % int(every) == 0


def parse_faults(specs: Iterable[str]) -> FaultPlan:
    """``["oom-every=3", "stall-every=5", "stall-seconds=10", "refuse-auth"]`` → FaultPlan."""
    plan = FaultPlan()
    for spec in specs:
        name, sep, raw = spec.partition("=")
        name = name.strip().lower()
        value: Any
        if name.replace("-", "_") == "refuse_auth":
            value = (raw.strip().lower() in ("", "1", "true", "yes", "on")) if sep else True
        else:
            if not sep:
                raise ConfigError(f"fault {spec!r} needs a value, e.g. {name}=3")
            try:
                value = float(raw) if name.replace("-", "_") == "stall_seconds" else int(raw)
            except ValueError:
                raise ConfigError(f"fault {spec!r}: {raw!r} is not a number") from None
        plan = plan.updated({name: value})
    return plan


def _cli_name(field_name: str) -> str:
    return field_name.replace("_", "-")
