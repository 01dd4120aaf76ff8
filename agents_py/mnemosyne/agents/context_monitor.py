"""Context utilisation: edge-triggered alarms when a plan's context window fills up.

A `ContextMonitor` is fed token counts (used tokens out of a window) and answers with the
utilisation and the events it crossed into: `preserve` at 75 % (time to save what matters)
and `critical` at 90 % (time to compact). Each event fires once per upward crossing. A level
is re-armed only after utilisation drops below its threshold by `REARM_MARGIN`, so usage that
hovers around a threshold does not fire it again and again.

The older design was level-triggered: its Python monitor called the preservation callback on
every 10 ms poll while utilisation stayed high, and its Rust optimizer re-sent the threshold
event every 5 s, storing a checkpoint each time.

`ContextMonitors` keeps one monitor per plan, the most recently used `MAX_TRACKED_PLANS` of
them. Everything here is pure and synchronous; a worker restart starts from armed monitors,
so the first observation after one may repeat an event once.
"""

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

PRESERVE_THRESHOLD = 0.75
CRITICAL_THRESHOLD = 0.90
# How far below its threshold utilisation must fall before a level can fire again.
REARM_MARGIN = 0.05
# Levels in rising order; events of one observation come out in this order.
LEVELS = (("preserve", PRESERVE_THRESHOLD), ("critical", CRITICAL_THRESHOLD))
MAX_TRACKED_PLANS = 1024


@dataclass(frozen=True)
class ContextEvent:
    level: str
    utilisation: float

    def to_wire(self) -> dict[str, Any]:
        return {"level": self.level, "utilisation": self.utilisation}


class ContextMonitor:
    """The alarm state of one context window."""

    def __init__(
        self,
        levels: tuple[tuple[str, float], ...] = LEVELS,
        rearm_margin: float = REARM_MARGIN,
    ) -> None:
        if rearm_margin < 0:
            raise ValueError(f"rearm margin must not be negative, got {rearm_margin}")
        self.levels = levels
        self.rearm_margin = rearm_margin
        self._armed = {name: True for name, _ in levels}

    def observe(self, used_tokens: int, window: int) -> tuple[float, list[ContextEvent]]:
        """The utilisation `used_tokens / window` and the levels it has just crossed into."""
        _check(used_tokens, window)
        utilisation = used_tokens / window
        reported = round(utilisation, 4)
        events = []
        for name, threshold in self.levels:
            if self._armed[name] and utilisation >= threshold:
                self._armed[name] = False
                events.append(ContextEvent(name, reported))
            elif not self._armed[name] and utilisation < threshold - self.rearm_margin:
                self._armed[name] = True
        return reported, events


class ContextMonitors:
    """One `ContextMonitor` per plan id, forgetting the least recently used beyond a bound."""

    def __init__(self, max_plans: int = MAX_TRACKED_PLANS) -> None:
        if max_plans < 1:
            raise ValueError(f"max plans must be at least 1, got {max_plans}")
        self.max_plans = max_plans
        self._monitors: OrderedDict[str, ContextMonitor] = OrderedDict()

    def observe(
        self, plan_id: str, used_tokens: int, window: int
    ) -> tuple[float, list[ContextEvent]]:
        # Checked first, so that a bad observation does not create a monitor.
        _check(used_tokens, window)
        monitor = self._monitors.get(plan_id)
        if monitor is None:
            monitor = self._monitors[plan_id] = ContextMonitor()
            if len(self._monitors) > self.max_plans:
                self._monitors.popitem(last=False)
        else:
            self._monitors.move_to_end(plan_id)
        return monitor.observe(used_tokens, window)

    def __len__(self) -> int:
        return len(self._monitors)


def _check(used_tokens: int, window: int) -> None:
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if used_tokens < 0:
        raise ValueError(f"used tokens must not be negative, got {used_tokens}")
