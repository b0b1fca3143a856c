"""The lifecycle's transition table, walked pair by pair, and random event sequences on a fake clock."""

from __future__ import annotations

import ast
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.lifecycle import (
    TRANSITIONS,
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
)
from dnsguard.lifecycle import machine as machine_module
from dnsguard.lifecycle.events import (
    TIMER_EVENTS,
    AuthenticatedReceive,
    ConfigReloaded,
    DataSent,
    Event,
    GiveUpDue,
    HandshakeCompleted,
    PathChanged,
    Start,
    Stop,
    WakeDetected,
)
from dnsguard.lifecycle.machine import EVENT_KINDS, REFUSED, render_table

TROUBLE = (State.CONNECTING, State.REASSERTING)
SETTINGS = LifecycleSettings(give_up_after=120, backoff_jitter=0)


def drain(machine: Lifecycle) -> list[Action]:
    actions = []
    while (action := machine.next_action()) is not None:
        actions.append(action)
    return actions


def machine_in(state: State) -> tuple[Lifecycle, float]:
    """A machine brought into `state` through its inputs and timers only; returns it and the time."""
    machine = Lifecycle(SETTINGS, random_source=lambda: 0.5)
    now = 0.0
    if state is not State.DISCONNECTED:
        machine.start(now)
    if state in (State.CONNECTED, State.REASSERTING):
        now = 0.1
        machine.handshake_completed(now)
    if state is State.REASSERTING:
        now = 10.0
        machine.wake_detected(now, slept=5.0)
    if state is State.FAILED:
        while machine.state is not State.FAILED:
            timer = machine.get_timer()
            assert timer is not None
            now = timer
            machine.handle_timer(now)
    drain(machine)
    assert machine.state is state and not machine.ignored
    return machine, now


def sample(kind: type[Event], now: float) -> Event:
    """An event of `kind` whose guard, if its entry has one, holds."""
    if kind is WakeDetected:
        return WakeDetected(now, slept=30.0)
    if kind is ConfigReloaded:
        return ConfigReloaded(now, endpoint_changed=True)
    return kind(now)  # type: ignore[call-arg]  # every other event carries only the time


def step_names(state: State, kind: type[Event]) -> set[str]:
    return {step.__name__ for step in TRANSITIONS[state, kind].steps}


def test_the_docstring_shows_the_table_as_it_is() -> None:
    assert machine_module.__doc__ is not None
    assert render_table() in machine_module.__doc__


def test_every_pair_is_keyed_by_a_known_state_and_event_kind() -> None:
    assert set(TRANSITIONS) <= set(itertools.product(State, EVENT_KINDS))


@pytest.mark.parametrize(
    ("state", "kind"),
    list(itertools.product(State, EVENT_KINDS)),
    ids=lambda value: value.value if isinstance(value, State) else value.__name__,
)
def test_each_pair_transitions_as_listed_or_is_refused_as_documented(state: State, kind: type[Event]) -> None:
    machine, now = machine_in(state)
    event = sample(kind, now + 1.0)
    transition = TRANSITIONS.get((state, kind))
    if transition is None and kind in REFUSED:
        with pytest.raises(LifecycleError, match=f"{kind.__name__} in state {state.value}"):
            machine.handle(event)
        assert machine.state is state and drain(machine) == [] and not machine.ignored
    elif transition is None:
        timer = machine.get_timer()
        machine.handle(event)
        assert machine.state is state and drain(machine) == []
        assert machine.ignored == {(state, kind): 1}
        assert machine.get_timer() == timer
    else:
        machine.handle(event)
        actions = drain(machine)
        assert machine.state is transition.target and not machine.ignored
        changes = [a for a in actions if isinstance(a, StateChanged)]
        if transition.target is state:
            assert changes == []
        else:
            assert actions[0] == changes[0] and len(changes) == 1
            assert (changes[0].old, changes[0].new) == (state, transition.target)
        # The steps listed are the actions seen.
        names = step_names(state, kind)
        assert any(isinstance(a, Reconnect) for a in actions) == any(n.startswith("reconnect") for n in names)
        assert (Probe() in actions) == ("_probe" in names)
        assert any(isinstance(a, GiveUp) for a in actions) == ("_give_up" in names)
        # Reconnecting always has a deadline ahead; stopped or given up has none.
        if transition.target in TROUBLE:
            assert machine.get_timer() is not None
        elif transition.target is not State.CONNECTED:
            assert machine.get_timer() is None


@pytest.mark.parametrize("state", (*TROUBLE, State.CONNECTED))
def test_a_reload_that_keeps_the_endpoint_changes_nothing(state: State) -> None:
    machine, now = machine_in(state)
    timer = machine.get_timer()
    machine.handle(ConfigReloaded(now + 1.0, endpoint_changed=False))
    assert machine.state is state and drain(machine) == [] and not machine.ignored
    assert machine.get_timer() == timer


def test_something_that_is_not_an_event_is_a_caller_bug() -> None:
    machine = Lifecycle()
    with pytest.raises(LifecycleError, match="not a lifecycle event"):
        machine.handle(Cause.START)  # type: ignore[arg-type]


def test_every_state_is_reachable_and_stop_reaches_disconnected_from_each() -> None:
    reached, frontier = {State.DISCONNECTED}, [State.DISCONNECTED]
    while frontier:
        state = frontier.pop()
        for (source, _), transition in TRANSITIONS.items():
            if source is state and transition.target not in reached:
                reached.add(transition.target)
                frontier.append(transition.target)
    assert reached == set(State)
    assert all(TRANSITIONS[state, Stop].target is State.DISCONNECTED for state in State)


def test_the_machine_imports_no_io() -> None:
    allowed = {"__future__", "collections", "collections.abc", "dataclasses", "enum", "random", "typing"}
    for name in ("machine.py", "events.py"):
        tree = ast.parse((Path(machine_module.__file__).parent / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                modules = {node.module or ""}
            else:
                continue
            assert all(m in allowed or m.startswith("dnsguard.") for m in modules), (name, modules)


# -- random sequences on a fake clock ---------------------------------------------------------------


@dataclass
class Observer:
    """Replays the actions against what the documentation promises, with its own record of time."""

    machine: Lifecycle
    now: float = 0.0
    state: State = State.DISCONNECTED
    attempt: int = 0
    last_reconnect: tuple[float, int] | None = None
    trouble_since: float | None = None
    give_ups: int = 0
    seen: list[Action] = field(default_factory=list)

    def observe(self) -> None:
        s = self.machine.settings
        for action in drain(self.machine):
            self.seen.append(action)
            if isinstance(action, StateChanged):
                assert action.old is self.state
                if action.new in TROUBLE and action.old not in TROUBLE:
                    self.trouble_since = self.now
                if action.new is State.CONNECTED:
                    self.attempt = 0
                self.state = action.new
            elif isinstance(action, Reconnect):
                assert self.state in TROUBLE
                if action.cause is Cause.WAKE:
                    self.trouble_since = self.now  # asleep is nobody's failure: the allowance restarts
                self.attempt = 1 if action.cause in (Cause.START, Cause.WAKE) else self.attempt + 1
                assert action.attempt == self.attempt
                if action.cause is Cause.RETRY:
                    # The handshake timed out, then the backoff for the previous attempt passed.
                    assert self.last_reconnect is not None
                    previous_time, previous_attempt = self.last_reconnect
                    assert previous_attempt == action.attempt - 1
                    base = min(s.backoff_max, s.backoff_initial * 2 ** (previous_attempt - 1))
                    gap = self.now - previous_time - s.handshake_timeout
                    assert base * (1 - s.backoff_jitter) - 1e-6 <= gap <= base * (1 + s.backoff_jitter) + 1e-6
                self.last_reconnect = (self.now, action.attempt)
            elif isinstance(action, Probe):
                assert self.state is State.CONNECTED
            elif isinstance(action, GiveUp):
                assert self.state is State.FAILED and s.give_up_after is not None
                assert self.trouble_since is not None
                assert self.now == pytest.approx(self.trouble_since + s.give_up_after)
                self.give_ups += 1
        self.check()

    def check(self) -> None:
        machine, s = self.machine, self.machine.settings
        assert machine.state is self.state
        timer = machine.get_timer()
        if machine.state is State.CONNECTED:
            assert machine.attempts == 0
        elif machine.state in TROUBLE:
            assert machine.attempts >= 1 and timer is not None  # never stuck reconnecting
            assert self.trouble_since is not None
            if s.give_up_after is not None:
                # The allowance is armed from when the trouble began, and never overstayed.
                assert machine.deadline(GiveUpDue) == pytest.approx(self.trouble_since + s.give_up_after)
                assert self.now - self.trouble_since <= s.give_up_after + 1e-6
        else:
            assert timer is None
        # A deadline is only ever armed in a state whose row handles it.
        assert not [kind for _, kind in machine.ignored if kind in TIMER_EVENTS]

    def feed(self, event: Event) -> None:
        """One input, checked against its table entry."""
        machine, before, kind = self.machine, self.machine.state, type(event)
        ignored = machine.ignored[before, kind]
        transition = TRANSITIONS.get((before, kind))
        if transition is None and kind in REFUSED:
            with pytest.raises(LifecycleError):
                machine.handle(event)
            assert machine.state is before
        else:
            machine.handle(event)
            if transition is None:
                assert machine.state is before and machine.ignored[before, kind] == ignored + 1
            elif transition.guard is None or transition.guard(event):
                assert machine.state is transition.target
            else:
                assert machine.state is before
        self.observe()

    def run_timers(self, end: float) -> None:
        """Fire every deadline up to `end` when it falls due, as the shell's re-armed timer does."""
        while (timer := self.machine.get_timer()) is not None and timer <= end:
            self.now = max(self.now, timer)
            self.machine.handle_timer(self.now)
            timer = self.machine.get_timer()
            assert timer is None or timer > self.now  # nothing due is left behind
            self.observe()
        self.now = end


INPUTS: dict[str, Callable[[float], Event]] = {
    "start": Start,
    "stop": Stop,
    "handshake": HandshakeCompleted,
    "receive": AuthenticatedReceive,
    "send": DataSent,
    "path": PathChanged,
    "reload": lambda now: ConfigReloaded(now, endpoint_changed=False),
    "reload_endpoint": lambda now: ConfigReloaded(now, endpoint_changed=True),
}

# Weighted by repetition: handshakes and traffic are common, a start or stop rare.
OPERATIONS = st.tuples(
    st.sampled_from(
        ["wait"] * 6
        + ["handshake"] * 3
        + ["send"] * 3
        + ["receive"] * 2
        + ["path", "path", "sleep", "reload", "reload_endpoint", "start", "stop"]
    ),
    st.floats(0, 40),
)

TIMINGS = st.builds(
    LifecycleSettings,
    handshake_timeout=st.floats(0.5, 10),
    dead_peer_timeout=st.floats(0.5, 30),
    probe_timeout=st.floats(0.5, 10),
    idle_probe_interval=st.sampled_from([0.0, 5.0, 25.0]),
    debounce=st.floats(0, 2),
    backoff_initial=st.floats(0.01, 5),
    backoff_max=st.floats(5, 60),
    backoff_jitter=st.floats(0, 0.5),
    give_up_after=st.none() | st.floats(1, 200),
)


@settings(max_examples=200, deadline=None)
@given(TIMINGS, st.randoms(use_true_random=False), st.lists(OPERATIONS, min_size=5, max_size=40))
def test_random_sequences_keep_every_promise(
    timings: LifecycleSettings, randomness: random.Random, operations: list[tuple[str, float]]
) -> None:
    """Whatever happens and whenever: every input follows its table entry, no deadline is left due or
    armed where its event is ignored, reconnecting always has a deadline ahead, retries keep their
    backoff bounds, and giving up comes exactly `give_up_after` into the trouble, or never."""
    machine = Lifecycle(timings, random_source=randomness.random)
    observer = Observer(machine)
    observer.feed(Start(0.0))
    for operation, amount in operations:
        if operation == "wait":
            observer.run_timers(observer.now + amount)
        elif operation == "sleep":
            # Suspended: no timer runs; on resume the client reports the wake, then runs what is due.
            slept = 60 * amount
            observer.now += slept
            observer.feed(WakeDetected(observer.now, slept))
            timer = machine.get_timer()
            if timer is not None and timer <= observer.now:
                machine.handle_timer(observer.now)
            observer.observe()
        else:
            observer.feed(INPUTS[operation](observer.now))
    if timings.give_up_after is None:
        assert observer.give_ups == 0
