"""The tunnel's connection lifecycle as a sans-I/O state machine driven by one transition table.

The seed rule: never tear the tunnel down while reconnection is still possible. The TUN, its
routes and the kill switch stay up in every state but DISCONNECTED; what this machine decides
is *when* to rebind the socket and handshake again, and it makes sure that

- a wake from suspend reconnects at once (timers that slept are not trusted),
- a burst of path changes gives one reconnection (debounce),
- a dead peer is noticed within a bounded time set by the configuration,
- failures back off exponentially with jitter, so a dead server never causes a reconnect storm.

Inputs are events carrying the current time (CLOCK_BOOTTIME seconds, see events.py), fed with
`handle(event)` or the method named after each (`start(now)`, `path_changed(now)`...); outputs are
actions drained with `next_action()`. Nothing here touches a socket or a clock.

Every transition is one entry of `TRANSITIONS`: (state, event kind) -> the next state, the steps
that arm or disarm deadlines and queue actions, and for one entry a guard. Rendered (`.`: ignored
and counted, `error`: LifecycleError, `?`: only when the guard holds, otherwise nothing happens):

                      disconnected  connecting    connected     reasserting   failed
Start                 connecting    error         error         error         error
Stop                  disconnected  disconnected  disconnected  disconnected  disconnected
HandshakeCompleted    .             connected     connected     connected     .
AuthenticatedReceive  .             connecting    connected     reasserting   .
DataSent              .             connecting    connected     reasserting   .
WakeDetected          .             connecting    reasserting   reasserting   .
PathChanged           .             connecting    connected     reasserting   .
ConfigReloaded        .             connecting?   reasserting?  reasserting?  .
GiveUpDue             .             failed        .             failed        .
DebounceElapsed       .             connecting    reasserting   reasserting   .
HandshakeTimedOut     .             connecting    .             reasserting   .
RetryDue              .             connecting    .             reasserting   .
ProbeUnanswered       .             .             reasserting   .             .
PeerSilent            .             .             connected     .             .

The last six rows are deadlines. `handle_timer(now)` disarms each deadline that is due and feeds
its event, in the order of the rows, so a deadline goes through the table like any input:
giving up comes first because nothing else matters after it; a path change's reconnection arms
a fresh handshake deadline, superseding a timeout due at the same instant; a retry whose delay is
already over fires in the same pass as the timeout that scheduled it; and a dead-peer reconnection
leaves CONNECTED before a new probe could be started.

Why a table: what a state accepts is read in one place instead of from every input's own
checks; a test walks it pair by pair and checks this rendering against it (`render_table()`);
and an event or a state added later is a row or a column to fill in, every cell of which must
be decided, as h11 keeps its HTTP state machine.

Which pairs are refused: only Start outside DISCONNECTED, a caller bug (the shell starts the
tunnel once and stops it before starting again; a second start means it lost track), raised as
LifecycleError, as h11 raises LocalProtocolError for what its own side got wrong. Every other
missing pair is something the world may well do at that moment: a handshake or a packet that
arrives after stop or give-up, a wake or a path change while down, a deadline that went stale.
Those change nothing and are counted in `ignored`, never raised into the I/O shell.

Cost: an event is one frozen object and one dict lookup. `data_sent`, called once per batch of
sent packets, takes about 0.6 us (a method that tests the state inline: 0.2 us, measured here);
even once per packet at the 45k packets/s the tunnel carries, that is under 3% of a core.
"""

from __future__ import annotations

import enum
import random
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from dnsguard.errors import UsageError
from dnsguard.lifecycle.events import (
    INPUTS,
    TIMER_EVENTS,
    AuthenticatedReceive,
    ConfigReloaded,
    DataSent,
    DebounceElapsed,
    Event,
    GiveUpDue,
    HandshakeCompleted,
    HandshakeTimedOut,
    PathChanged,
    PeerSilent,
    ProbeUnanswered,
    RetryDue,
    Start,
    Stop,
    TimerEvent,
    WakeDetected,
)


class State(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    REASSERTING = "reasserting"
    """Was connected; the path or the peer was lost and reconnection is under way (TUN kept up)."""
    FAILED = "failed"
    """Reconnection was given up (only when the configuration bounds it); the user must act."""


class Cause(enum.Enum):
    START = "start"
    WAKE = "wake"
    PATH_CHANGE = "path_change"
    DEAD_PEER = "dead_peer"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    CONFIG_RELOAD = "config_reload"
    RETRY = "retry"


class LifecycleError(UsageError):
    """An input that is not valid in the current state (a bug in the caller)."""


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Rebind the encrypted socket (fresh source address/route) and start a handshake now."""

    cause: Cause
    attempt: int


@dataclass(frozen=True, slots=True)
class Probe:
    """Start a handshake to test that the peer is alive (traffic has been one-sided)."""


@dataclass(frozen=True, slots=True)
class StateChanged:
    old: State
    new: State
    cause: Cause | None
    """START into CONNECTING; into CONNECTED or FAILED, the cause of the reconnection that the
    handshake answered or that was given up on; None into REASSERTING (the Reconnect that follows
    names its cause) and into DISCONNECTED (the user stopped)."""


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Reconnection is exhausted: tear the tunnel down and report."""

    reason: str


Action = Reconnect | Probe | StateChanged | GiveUp


@dataclass
class LifecycleSettings:
    """Timing knobs, all in seconds."""

    handshake_timeout: float = 5.0
    """A handshake that has not completed this long after a (re)connect counts as failed."""
    dead_peer_timeout: float = 15.0
    """After sending, no authenticated packet for this long means the peer may be dead: probe."""
    probe_timeout: float = 5.0
    """A probe not answered within this long declares the peer dead."""
    idle_probe_interval: float = 0.0
    """If > 0: with no authenticated packet for this long, probe even without outgoing traffic."""
    debounce: float = 0.5
    """Path changes within this quiet period are merged into one reconnection."""
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    backoff_jitter: float = 0.2
    """Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter]."""
    give_up_after: float | None = None
    """Stop reconnecting after this long without success; None: never (the default)."""


@dataclass
class Lifecycle:
    """Connection lifecycle driven by events and time."""

    settings: LifecycleSettings = field(default_factory=LifecycleSettings)
    random_source: Callable[[], float] = random.random
    state: State = State.DISCONNECTED
    attempts: int = 0
    """Reconnection attempts since the last successful handshake (or the last start or wake)."""
    reconnects: dict[Cause, int] = field(default_factory=dict)
    ignored: Counter[tuple[State, type[Event]]] = field(default_factory=Counter)
    """Events that TRANSITIONS has no entry for in the state they arrived in, by (state, kind).
    Refused kinds are raised instead, not counted."""

    def __post_init__(self) -> None:
        self._actions: deque[Action] = deque()
        self._handshake_deadline: float | None = None
        self._retry_at: float | None = None
        self._debounce_at: float | None = None
        self._probe_deadline: float | None = None
        self._last_rx: float | None = None
        self._first_unanswered_tx: float | None = None
        self._trouble_since: float | None = None
        """When the tunnel stopped working: set exactly while CONNECTING or REASSERTING."""
        self.last_handshake: float | None = None
        self.last_cause: Cause | None = None

    # -- inputs ---------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """Apply `event` as TRANSITIONS says; LifecycleError for a refused pair or a non-event."""
        kind = type(event)
        if kind in _TIMER_KINDS:
            self._disarm(event)
        transition = TRANSITIONS.get((self.state, kind))
        if transition is None:
            if kind in REFUSED:
                raise LifecycleError(f"{kind.__name__} in state {self.state.value}")
            if kind not in _KINDS:
                raise LifecycleError(f"not a lifecycle event: {event!r}")
            self.ignored[self.state, kind] += 1
            return
        if transition.guard is not None and not transition.guard(event):
            return
        if transition.target is not self.state:
            self._actions.append(
                StateChanged(self.state, transition.target, self._cause_into(transition.target))
            )
            self.state = transition.target
        for step in transition.steps:
            step(self, event)

    def start(self, now: float) -> None:
        """The user brought the tunnel up."""
        self.handle(Start(now))

    def stop(self, now: float) -> None:
        """The user stopped the tunnel: the only way besides GiveUp to leave the reconnecting states."""
        self.handle(Stop(now))

    def handshake_completed(self, now: float) -> None:
        """A handshake finished: the tunnel carries traffic."""
        self.handle(HandshakeCompleted(now))

    def authenticated_receive(self, now: float) -> None:
        """Any packet from the peer passed authentication (data, keepalive or handshake)."""
        self.handle(AuthenticatedReceive(now))

    def data_sent(self, now: float) -> None:
        """A data packet went to the peer (cheap: called per batch, not per packet)."""
        self.handle(DataSent(now))

    def wake_detected(self, now: float, slept: float) -> None:
        """The machine resumed from suspend (or the process was frozen): reconnect at once.

        Time spent asleep is nobody's failure: the backoff and the give-up allowance start afresh
        from the wake, and deadlines that passed while asleep are dropped rather than fired.
        """
        self.handle(WakeDetected(now, slept))

    def path_changed(self, now: float) -> None:
        """The default route, a link or an address changed; merged with others in the debounce window."""
        self.handle(PathChanged(now))

    def config_reloaded(self, now: float, endpoint_changed: bool) -> None:
        """Configuration was reloaded; only a changed endpoint or key needs a new handshake."""
        self.handle(ConfigReloaded(now, endpoint_changed))

    # -- time -----------------------------------------------------------------------------

    def deadline(self, kind: type[TimerEvent]) -> float | None:
        """When the deadline behind timer event `kind` falls due; None when it is not armed."""
        s = self.settings
        if kind is GiveUpDue:
            if self._trouble_since is None or s.give_up_after is None:
                return None
            return self._trouble_since + s.give_up_after
        if kind is DebounceElapsed:
            return self._debounce_at
        if kind is HandshakeTimedOut:
            return self._handshake_deadline
        if kind is RetryDue:
            return self._retry_at
        if kind is ProbeUnanswered:
            return self._probe_deadline
        # PeerSilent: the silence watch runs only while connected and no probe is out.
        if self.state is not State.CONNECTED or self._probe_deadline is not None:
            return None
        silent = []
        if self._first_unanswered_tx is not None:
            silent.append(self._first_unanswered_tx + s.dead_peer_timeout)
        if s.idle_probe_interval > 0 and self._last_rx is not None:
            silent.append(self._last_rx + s.idle_probe_interval)
        return min(silent) if silent else None

    def get_timer(self) -> float | None:
        """The earliest time at which `handle_timer` has something to do."""
        pending = [d for kind in TIMER_EVENTS if (d := self.deadline(kind)) is not None]
        return min(pending) if pending else None

    def handle_timer(self, now: float) -> None:
        """Fire every deadline due at `now`, in the order of TIMER_EVENTS."""
        for kind in TIMER_EVENTS:
            due = self.deadline(kind)
            if due is not None and now >= due:
                self.handle(kind(now))

    def next_action(self) -> Action | None:
        """The next action for the I/O shell, or None."""
        return self._actions.popleft() if self._actions else None

    # -- internals ------------------------------------------------------------------------

    def _disarm(self, event: Event) -> None:
        """A timer event consumes its deadline whatever the table says, so a deadline whose event
        is ignored in the current state cannot stay due (the shell would be woken for it forever)."""
        if isinstance(event, DebounceElapsed):
            self._debounce_at = None
        elif isinstance(event, HandshakeTimedOut):
            self._handshake_deadline = None
        elif isinstance(event, RetryDue):
            self._retry_at = None
        elif isinstance(event, ProbeUnanswered):
            self._probe_deadline = None
        # GiveUpDue and PeerSilent are computed from the state, and their steps reset what they
        # are computed from.

    def _cause_into(self, new: State) -> Cause | None:
        if new is State.CONNECTING:
            return Cause.START
        if new in (State.CONNECTED, State.FAILED):
            return self.last_cause
        return None


# -- the table ----------------------------------------------------------------------------------

Step = Callable[[Lifecycle, Event], None]
"""One thing a transition does after the state is set: arm or disarm deadlines, queue actions."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One entry of the table: where the event leads, and the steps run once the state is set (after
    its StateChanged is queued), in order."""

    target: State
    steps: tuple[Step, ...] = ()
    guard: Callable[[Event], bool] | None = None
    """When given and false for the event, the event changes nothing at all."""


def _restart_backoff(machine: Lifecycle, event: Event) -> None:
    machine.attempts = 0


def _begin_trouble(machine: Lifecycle, event: Event) -> None:
    if machine._trouble_since is None:
        machine._trouble_since = event.now


def _clear_timers(machine: Lifecycle, event: Event) -> None:
    machine._handshake_deadline = machine._retry_at = machine._debounce_at = machine._probe_deadline = None
    machine._trouble_since = None


def _reconnect(cause: Cause) -> Step:
    """Queue Reconnect(cause): one more attempt, with a handshake deadline and nothing else pending."""

    def reconnect(machine: Lifecycle, event: Event) -> None:
        machine.attempts += 1
        machine.last_cause = cause
        machine.reconnects[cause] = machine.reconnects.get(cause, 0) + 1
        machine._retry_at = None
        machine._probe_deadline = None
        machine._handshake_deadline = event.now + machine.settings.handshake_timeout
        machine._actions.append(Reconnect(cause, machine.attempts))

    reconnect.__name__ = f"reconnect_{cause.value}"
    return reconnect


def _schedule_retry(machine: Lifecycle, event: Event) -> None:
    s = machine.settings
    delay = min(s.backoff_max, s.backoff_initial * 2 ** min(max(0, machine.attempts - 1), 32))
    delay *= 1 + s.backoff_jitter * (2 * machine.random_source() - 1)
    machine._retry_at = event.now + delay


def _mark_connected(machine: Lifecycle, event: Event) -> None:
    machine.last_handshake = event.now
    machine._last_rx = event.now
    machine._first_unanswered_tx = None
    machine._handshake_deadline = machine._retry_at = machine._probe_deadline = None
    machine._trouble_since = None
    machine.attempts = 0


def _note_receive(machine: Lifecycle, event: Event) -> None:
    machine._last_rx = event.now
    machine._first_unanswered_tx = None
    machine._probe_deadline = None


def _note_send(machine: Lifecycle, event: Event) -> None:
    # The dead-peer clock runs from the first packet that nothing has answered since.
    first = machine._first_unanswered_tx
    if first is None or (machine._last_rx is not None and machine._last_rx >= first):
        machine._first_unanswered_tx = event.now


def _arm_debounce(machine: Lifecycle, event: Event) -> None:
    machine._debounce_at = event.now + machine.settings.debounce


def _probe(machine: Lifecycle, event: Event) -> None:
    machine._probe_deadline = event.now + machine.settings.probe_timeout
    machine._first_unanswered_tx = None
    machine._actions.append(Probe())


def _give_up(machine: Lifecycle, event: Event) -> None:
    _clear_timers(machine, event)
    machine._actions.append(GiveUp(f"no working tunnel for {machine.settings.give_up_after:.0f} s"))


def _endpoint_changed(event: Event) -> bool:
    return isinstance(event, ConfigReloaded) and event.endpoint_changed


# Short names keep one entry to a line.
_DISCONNECTED = State.DISCONNECTED
_CONNECTING = State.CONNECTING
_CONNECTED = State.CONNECTED
_REASSERTING = State.REASSERTING
_FAILED = State.FAILED

_START = Transition(_CONNECTING, (_restart_backoff, _begin_trouble, _reconnect(Cause.START)))
_STOP = Transition(_DISCONNECTED, (_clear_timers,))
_WAKE = (_clear_timers, _restart_backoff, _begin_trouble, _reconnect(Cause.WAKE))
_DEBOUNCE = (_begin_trouble, _reconnect(Cause.PATH_CHANGE))
_RELOAD = (_begin_trouble, _reconnect(Cause.CONFIG_RELOAD))
_RETRY = (_reconnect(Cause.RETRY),)
_GIVE_UP = Transition(_FAILED, (_give_up,))

TRANSITIONS: Final[Mapping[tuple[State, type[Event]], Transition]] = {
    (_DISCONNECTED, Start): _START,
    (_DISCONNECTED, Stop): _STOP,
    (_CONNECTING, Stop): _STOP,
    (_CONNECTED, Stop): _STOP,
    (_REASSERTING, Stop): _STOP,
    (_FAILED, Stop): _STOP,
    (_CONNECTING, HandshakeCompleted): Transition(_CONNECTED, (_mark_connected,)),
    (_CONNECTED, HandshakeCompleted): Transition(_CONNECTED, (_mark_connected,)),
    (_REASSERTING, HandshakeCompleted): Transition(_CONNECTED, (_mark_connected,)),
    (_CONNECTING, AuthenticatedReceive): Transition(_CONNECTING, (_note_receive,)),
    (_CONNECTED, AuthenticatedReceive): Transition(_CONNECTED, (_note_receive,)),
    (_REASSERTING, AuthenticatedReceive): Transition(_REASSERTING, (_note_receive,)),
    (_CONNECTING, DataSent): Transition(_CONNECTING, (_note_send,)),
    (_CONNECTED, DataSent): Transition(_CONNECTED, (_note_send,)),
    (_REASSERTING, DataSent): Transition(_REASSERTING, (_note_send,)),
    (_CONNECTING, WakeDetected): Transition(_CONNECTING, _WAKE),
    (_CONNECTED, WakeDetected): Transition(_REASSERTING, _WAKE),
    (_REASSERTING, WakeDetected): Transition(_REASSERTING, _WAKE),
    (_CONNECTING, PathChanged): Transition(_CONNECTING, (_arm_debounce,)),
    (_CONNECTED, PathChanged): Transition(_CONNECTED, (_arm_debounce,)),
    (_REASSERTING, PathChanged): Transition(_REASSERTING, (_arm_debounce,)),
    (_CONNECTING, ConfigReloaded): Transition(_CONNECTING, _RELOAD, _endpoint_changed),
    (_CONNECTED, ConfigReloaded): Transition(_REASSERTING, _RELOAD, _endpoint_changed),
    (_REASSERTING, ConfigReloaded): Transition(_REASSERTING, _RELOAD, _endpoint_changed),
    (_CONNECTING, GiveUpDue): _GIVE_UP,
    (_REASSERTING, GiveUpDue): _GIVE_UP,
    (_CONNECTING, DebounceElapsed): Transition(_CONNECTING, _DEBOUNCE),
    (_CONNECTED, DebounceElapsed): Transition(_REASSERTING, _DEBOUNCE),
    (_REASSERTING, DebounceElapsed): Transition(_REASSERTING, _DEBOUNCE),
    (_CONNECTING, HandshakeTimedOut): Transition(_CONNECTING, (_schedule_retry,)),
    (_REASSERTING, HandshakeTimedOut): Transition(_REASSERTING, (_schedule_retry,)),
    (_CONNECTING, RetryDue): Transition(_CONNECTING, _RETRY),
    (_REASSERTING, RetryDue): Transition(_REASSERTING, _RETRY),
    (_CONNECTED, ProbeUnanswered): Transition(_REASSERTING, (_begin_trouble, _reconnect(Cause.DEAD_PEER))),
    (_CONNECTED, PeerSilent): Transition(_CONNECTED, (_probe,)),
}
"""(state, event kind) -> Transition. A pair missing here is ignored (counted in `Lifecycle.ignored`)
unless its kind is in REFUSED."""

REFUSED: Final[frozenset[type[Event]]] = frozenset({Start})
"""Event kinds whose missing pairs are caller bugs, raised as LifecycleError."""

EVENT_KINDS: Final[tuple[type[Event], ...]] = INPUTS + TIMER_EVENTS
_KINDS: Final = frozenset(EVENT_KINDS)
_TIMER_KINDS: Final = frozenset(TIMER_EVENTS)


def render_table() -> str:
    """TRANSITIONS as the grid in this module's docstring (a test keeps the two the same)."""
    width = max(len(kind.__name__) for kind in EVENT_KINDS) + 2
    lines = [" " * width + "".join(f"{state.value:<14}" for state in State).rstrip()]
    for kind in EVENT_KINDS:
        cells = []
        for state in State:
            transition = TRANSITIONS.get((state, kind))
            if transition is None:
                cells.append("error" if kind in REFUSED else ".")
            else:
                cells.append(transition.target.value + ("?" if transition.guard is not None else ""))
        lines.append(f"{kind.__name__:<{width}}" + "".join(f"{cell:<14}" for cell in cells).rstrip())
    return "\n".join(lines)
