"""The lifecycle state machine, driven by a fake clock: every transition, debounce and backoff."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.lifecycle import (
    Action,
    Cause,
    GiveUp,
    Lifecycle,
    LifecycleError,
    LifecycleSettings,
    Probe,
    Reconnect,
    State,
    StateChanged,
    WakeDetector,
)


def drain(machine: Lifecycle) -> list[Action]:
    actions = []
    while (action := machine.next_action()) is not None:
        actions.append(action)
    return actions


def reconnects(actions: list[Action]) -> list[Reconnect]:
    return [a for a in actions if isinstance(a, Reconnect)]


def run_until(machine: Lifecycle, now: float, end: float) -> tuple[float, list[Action]]:
    """Fire every timer up to `end`, as the asyncio shell's single re-armed timer would."""
    actions: list[Action] = []
    while (timer := machine.get_timer()) is not None and timer <= end:
        now = max(now, timer)
        machine.handle_timer(now)
        actions += drain(machine)
    return end, actions


def connected(**overrides: float) -> Lifecycle:
    machine = Lifecycle(LifecycleSettings(**overrides), random_source=lambda: 0.5)
    machine.start(0.0)
    machine.handshake_completed(0.1)
    drain(machine)
    return machine


def test_start_connects_and_handshake_makes_it_connected() -> None:
    machine = Lifecycle(random_source=lambda: 0.5)
    machine.start(0.0)
    assert drain(machine) == [
        StateChanged(State.DISCONNECTED, State.CONNECTING, Cause.START),
        Reconnect(Cause.START, 1),
    ]
    machine.handshake_completed(0.2)
    assert drain(machine) == [StateChanged(State.CONNECTING, State.CONNECTED, Cause.START)]
    assert machine.attempts == 0


def test_start_twice_is_a_caller_bug() -> None:
    machine = Lifecycle()
    machine.start(0.0)
    with pytest.raises(LifecycleError):
        machine.start(1.0)


def test_wake_reconnects_at_once_and_keeps_tunnel_up() -> None:
    machine = connected()
    machine.wake_detected(500.0, slept=480.0)
    actions = drain(machine)
    assert StateChanged(State.CONNECTED, State.REASSERTING, None) in actions
    assert reconnects(actions) == [Reconnect(Cause.WAKE, 1)]
    machine.handshake_completed(500.3)
    assert machine.state is State.CONNECTED


def test_burst_of_path_changes_gives_one_reconnection() -> None:
    machine = connected(debounce=0.5)
    for i in range(20):
        machine.path_changed(10.0 + i * 0.1)
    assert reconnects(drain(machine)) == []
    _, actions = run_until(machine, 12.0, 12.5)
    assert reconnects(actions) == [Reconnect(Cause.PATH_CHANGE, 1)]
    assert machine.state is State.REASSERTING


def test_failed_handshakes_back_off_exponentially_with_a_cap() -> None:
    machine = connected(handshake_timeout=5, backoff_initial=1, backoff_max=30, backoff_jitter=0)
    machine.wake_detected(100.0, slept=50)
    drain(machine)
    times = []
    now = 100.0
    for _ in range(20):  # two timers per attempt: the handshake timeout, then the retry
        timer = machine.get_timer()
        assert timer is not None
        now = timer
        machine.handle_timer(now)
        times += [now for a in drain(machine) if isinstance(a, Reconnect)]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    # Each gap is the 5 s handshake timeout plus a doubling backoff capped at 30 s.
    assert gaps[:5] == [5 + 2, 5 + 4, 5 + 8, 5 + 16, 5 + 30]
    assert all(gap == 35 for gap in gaps[5:])
    assert machine.state is State.REASSERTING


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=12, max_size=12))
def test_backoff_stays_within_jitter_bounds(randoms: list[float]) -> None:
    source = iter(randoms)
    machine = Lifecycle(
        LifecycleSettings(handshake_timeout=5, backoff_initial=1, backoff_max=30, backoff_jitter=0.2),
        random_source=lambda: next(source),
    )
    machine.start(0.0)
    drain(machine)
    now, last = 0.0, 0.0
    for attempt in range(1, 11):
        timer = machine.get_timer()
        assert timer is not None
        machine.handle_timer(timer)  # handshake timeout: schedules the retry
        retry = machine.get_timer()
        assert retry is not None
        expected = min(30, 2 ** (attempt - 1))
        assert expected * 0.8 - 1e-9 <= retry - timer <= expected * 1.2 + 1e-9
        machine.handle_timer(retry)
        now, last = retry, now
        drain(machine)
    assert now > last


def test_dead_peer_is_noticed_within_the_configured_bound() -> None:
    machine = connected(dead_peer_timeout=10, probe_timeout=3)
    machine.data_sent(20.0)
    machine.data_sent(21.0)  # still unanswered since 20.0
    _, actions = run_until(machine, 21.0, 30.5)
    assert [a for a in actions if isinstance(a, Probe)] == [Probe()]
    _, actions = run_until(machine, 30.5, 33.5)
    assert reconnects(actions) == [Reconnect(Cause.DEAD_PEER, 1)]
    assert machine.state is State.REASSERTING


def test_answered_traffic_is_not_a_dead_peer() -> None:
    machine = connected(dead_peer_timeout=10)
    for second in range(20, 100):
        machine.data_sent(float(second))
        machine.authenticated_receive(second + 0.05)
        _, actions = run_until(machine, float(second), second + 0.9)
        assert actions == []
    assert machine.state is State.CONNECTED


def test_probe_answered_in_time_keeps_connected() -> None:
    machine = connected(dead_peer_timeout=10, probe_timeout=3)
    machine.data_sent(20.0)
    run_until(machine, 20.0, 30.1)
    machine.authenticated_receive(30.5)
    _, actions = run_until(machine, 30.5, 60.0)
    assert reconnects(actions) == []
    assert machine.state is State.CONNECTED


def test_idle_probe_interval_checks_a_silent_tunnel() -> None:
    machine = connected(idle_probe_interval=25)
    _, actions = run_until(machine, 0.1, 25.2)
    assert Probe() in actions


def test_give_up_only_when_configured() -> None:
    forever = connected(handshake_timeout=5, backoff_max=30)
    forever.wake_detected(10.0, slept=5)
    _, actions = run_until(forever, 10.0, 10.0 + 86400)
    assert not [a for a in actions if isinstance(a, GiveUp)]
    assert forever.state is State.REASSERTING
    bounded = connected(handshake_timeout=5, give_up_after=120)
    bounded.wake_detected(10.0, slept=5)
    _, actions = run_until(bounded, 10.0, 500.0)
    assert [a for a in actions if isinstance(a, GiveUp)]
    assert bounded.state is State.FAILED
    assert bounded.get_timer() is None


def test_stop_leaves_every_state() -> None:
    machine = connected()
    machine.wake_detected(5.0, slept=2)
    machine.stop(6.0)
    assert machine.state is State.DISCONNECTED
    assert machine.get_timer() is None
    machine.path_changed(7.0)
    assert machine.get_timer() is None


def test_config_reload_reconnects_only_when_the_endpoint_changed() -> None:
    machine = connected()
    machine.config_reloaded(5.0, endpoint_changed=False)
    assert reconnects(drain(machine)) == []
    machine.config_reloaded(6.0, endpoint_changed=True)
    assert reconnects(drain(machine)) == [Reconnect(Cause.CONFIG_RELOAD, 1)]


def test_wake_detector_sees_suspend_and_stalls() -> None:
    detector = WakeDetector(tick_interval=1.0)
    assert detector.observe(100.0, 50.0) is None
    assert detector.observe(101.0, 51.0) is None
    wake = detector.observe(702.0, 52.0)  # boottime ran 601 s, monotonic 1 s: slept 600 s
    assert wake is not None and wake.suspended and wake.gap == pytest.approx(601.0)
    stall = detector.observe(712.0, 62.0)  # both clocks jumped 10 s: the process was frozen
    assert stall is not None and not stall.suspended
    assert detector.observe(713.0, 63.0) is None


def wake_as_the_client_does(machine: Lifecycle, now: float, slept: float) -> list[Action]:
    """The client's tick: report the wake, then run whatever timers are due at the same instant."""
    machine.wake_detected(now, slept)
    timer = machine.get_timer()
    if timer is not None and timer <= now:
        machine.handle_timer(now)
    return drain(machine)


def test_wake_from_connected_gives_one_reconnection_and_no_stale_probe() -> None:
    machine = connected(dead_peer_timeout=15, idle_probe_interval=25)
    machine.data_sent(10.0)  # unanswered when the lid closed: its timer is long overdue at wake
    actions = wake_as_the_client_does(machine, 610.0, slept=600.0)
    assert reconnects(actions) == [Reconnect(Cause.WAKE, 1)]
    assert Probe() not in actions
    machine.handshake_completed(610.05)
    assert machine.state is State.CONNECTED
    assert machine.get_timer() == pytest.approx(610.05 + 25)


def test_time_asleep_does_not_count_towards_giving_up() -> None:
    machine = connected(handshake_timeout=5, backoff_max=30, give_up_after=120)
    machine.path_changed(10.0)
    _, actions = run_until(machine, 10.0, 100.0)  # reconnecting for 90 s, then the lid closes
    assert machine.state is State.REASSERTING and not [a for a in actions if isinstance(a, GiveUp)]
    actions = wake_as_the_client_does(machine, 3700.0, slept=3600.0)
    assert not [a for a in actions if isinstance(a, GiveUp)]
    assert reconnects(actions) == [Reconnect(Cause.WAKE, 1)]
    # The full allowance again, counted from the wake.
    _, actions = run_until(machine, 3700.0, 3700.0 + 119.0)
    assert not [a for a in actions if isinstance(a, GiveUp)]
    _, actions = run_until(machine, 3819.0, 3700.0 + 121.0)
    assert [a for a in actions if isinstance(a, GiveUp)]


def test_wake_restarts_the_backoff() -> None:
    machine = connected(handshake_timeout=5, backoff_initial=1, backoff_max=30, backoff_jitter=0)
    machine.path_changed(10.0)
    run_until(machine, 10.0, 600.0)  # failing for ten minutes: retries are 30 s apart by now
    assert machine.attempts > 5
    actions = wake_as_the_client_does(machine, 4200.0, slept=3600.0)
    assert reconnects(actions) == [Reconnect(Cause.WAKE, 1)]
    machine.handle_timer(4205.0)  # that handshake timed out: the first retry comes after backoff_initial
    assert machine.get_timer() == pytest.approx(4206.0)
