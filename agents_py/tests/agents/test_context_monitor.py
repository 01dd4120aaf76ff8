"""Tests of mnemosyne.agents.context_monitor: edge-triggered alarms with hysteresis."""

import pytest

from mnemosyne.agents.context_monitor import (
    CRITICAL_THRESHOLD,
    PRESERVE_THRESHOLD,
    REARM_MARGIN,
    ContextEvent,
    ContextMonitor,
    ContextMonitors,
)

WINDOW = 1000


def levels(monitor, used):
    """The levels of the events one observation of `used` tokens fires."""
    _, events = monitor.observe(used, WINDOW)
    return [event.level for event in events]


def test_the_thresholds_are_the_older_designs_with_a_five_point_margin():
    assert (PRESERVE_THRESHOLD, CRITICAL_THRESHOLD, REARM_MARGIN) == (0.75, 0.90, 0.05)


def test_below_the_thresholds_nothing_fires():
    monitor = ContextMonitor()
    assert monitor.observe(0, WINDOW) == (0.0, [])
    assert monitor.observe(749, WINDOW) == (0.749, [])


def test_crossing_75_percent_fires_preserve_once_however_often_it_is_polled():
    monitor = ContextMonitor()
    assert monitor.observe(750, WINDOW) == (0.75, [ContextEvent("preserve", 0.75)])
    assert [levels(monitor, used) for used in (760, 800, 750, 899)] == [[], [], [], []]


def test_crossing_90_percent_fires_critical_once():
    monitor = ContextMonitor()
    assert levels(monitor, 800) == ["preserve"]
    assert levels(monitor, 900) == ["critical"]
    assert levels(monitor, 950) == []


def test_a_jump_past_both_thresholds_fires_both_in_rising_order():
    monitor = ContextMonitor()
    utilisation, events = monitor.observe(950, WINDOW)
    assert utilisation == 0.95
    assert events == [ContextEvent("preserve", 0.95), ContextEvent("critical", 0.95)]


def test_a_level_rearms_only_after_falling_below_its_threshold_by_the_margin():
    monitor = ContextMonitor()
    assert levels(monitor, 760) == ["preserve"]
    # Hovering just under the threshold, within the margin, does not re-arm it.
    assert levels(monitor, 720) == []
    assert levels(monitor, 760) == []
    assert levels(monitor, 701) == []
    assert levels(monitor, 760) == []
    # Below 70 % it re-arms, and the next upward crossing fires again.
    assert levels(monitor, 699) == []
    assert levels(monitor, 760) == ["preserve"]


def test_critical_rearms_independently_of_preserve():
    monitor = ContextMonitor()
    assert levels(monitor, 920) == ["preserve", "critical"]
    assert levels(monitor, 820) == []  # critical re-armed (below 85 %), preserve not
    assert levels(monitor, 910) == ["critical"]
    assert levels(monitor, 100) == []
    assert levels(monitor, 910) == ["preserve", "critical"]


def test_utilisation_is_reported_rounded_and_may_exceed_one():
    monitor = ContextMonitor()
    assert monitor.observe(1, 3)[0] == 0.3333
    assert monitor.observe(1500, WINDOW)[0] == 1.5


@pytest.mark.parametrize(("used", "window"), [(-1, 10), (1, 0), (1, -5)])
def test_impossible_counts_are_refused(used, window):
    with pytest.raises(ValueError):
        ContextMonitor().observe(used, window)


def test_each_plan_has_its_own_monitor():
    monitors = ContextMonitors()
    assert [e.level for e in monitors.observe("a", 800, WINDOW)[1]] == ["preserve"]
    assert [e.level for e in monitors.observe("b", 800, WINDOW)[1]] == ["preserve"]
    assert monitors.observe("a", 800, WINDOW)[1] == []


def test_the_least_recently_used_plan_is_forgotten_beyond_the_bound():
    monitors = ContextMonitors(max_plans=2)
    monitors.observe("a", 800, WINDOW)
    monitors.observe("b", 800, WINDOW)
    monitors.observe("a", 800, WINDOW)  # a is now the most recent
    monitors.observe("c", 800, WINDOW)  # b is forgotten
    assert len(monitors) == 2
    assert monitors.observe("a", 800, WINDOW)[1] == []
    assert [e.level for e in monitors.observe("b", 800, WINDOW)[1]] == ["preserve"]


def test_a_bad_observation_does_not_create_a_monitor():
    monitors = ContextMonitors()
    with pytest.raises(ValueError):
        monitors.observe("a", 1, 0)
    assert len(monitors) == 0
