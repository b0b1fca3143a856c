"""The tunnel's connection lifecycle as a sans-I/O state machine.

The seed rule: never tear the tunnel down while reconnection is still possible. The TUN, its
routes and the kill switch stay up in every state but DISCONNECTED; what this machine decides
is *when* to rebind the socket and handshake again, and it makes sure that

- a wake from suspend reconnects at once (timers that slept are not trusted),
- a burst of path changes gives one reconnection (debounce),
- a dead peer is noticed within a bounded time set by the configuration,
- failures back off exponentially with jitter, so a dead server never causes a reconnect storm.

Inputs are method calls with the current time (CLOCK_BOOTTIME seconds); outputs are actions
drained with `next_action()`. Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dnsguard.errors import DnsguardError


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


class LifecycleError(DnsguardError):
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
    """Reconnection attempts since the last successful handshake."""
    reconnects: dict[Cause, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._actions: deque[Action] = deque()
        self._handshake_deadline: float | None = None
        self._retry_at: float | None = None
        self._retry_cause = Cause.RETRY
        self._debounce_at: float | None = None
        self._probe_deadline: float | None = None
        self._last_rx: float | None = None
        self._first_unanswered_tx: float | None = None
        self._trouble_since: float | None = None
        self.last_handshake: float | None = None
        self.last_cause: Cause | None = None

    # -- inputs ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The user brought the tunnel up."""
        if self.state is not State.DISCONNECTED:
            raise LifecycleError(f"start in state {self.state.value}")
        self._set_state(State.CONNECTING, Cause.START)
        self._trouble_since = now
        self._reconnect(Cause.START, now)

    def stop(self, now: float) -> None:
        """The user stopped the tunnel: the only way besides GiveUp to leave the reconnecting states."""
        self._clear_timers()
        self._set_state(State.DISCONNECTED, None)

    def handshake_completed(self, now: float) -> None:
        """A handshake finished: the tunnel carries traffic."""
        if self.state in (State.DISCONNECTED, State.FAILED):
            return
        self.last_handshake = now
        self._last_rx = now
        self._first_unanswered_tx = None
        self._handshake_deadline = None
        self._probe_deadline = None
        self._retry_at = None
        self._trouble_since = None
        self.attempts = 0
        self._set_state(State.CONNECTED, self.last_cause)

    def authenticated_receive(self, now: float) -> None:
        """Any packet from the peer passed authentication (data, keepalive or handshake)."""
        self._last_rx = now
        self._first_unanswered_tx = None
        self._probe_deadline = None

    def data_sent(self, now: float) -> None:
        """A data packet went to the peer (cheap: called per batch, not per packet)."""
        if self._first_unanswered_tx is None or (
            self._last_rx is not None and self._last_rx >= self._first_unanswered_tx
        ):
            self._first_unanswered_tx = now

    def wake_detected(self, now: float, slept: float) -> None:
        """The machine resumed from suspend (or the process was frozen): reconnect at once.

        Time spent asleep is nobody's failure: the backoff and the give-up allowance start afresh
        from the wake, and deadlines that passed while asleep are dropped rather than fired.
        """
        if self.state in (State.DISCONNECTED, State.FAILED):
            return
        self._clear_timers()
        self.attempts = 0
        self._trouble(now)
        self._reconnect(Cause.WAKE, now)

    def path_changed(self, now: float) -> None:
        """The default route, a link or an address changed; merged with others in the debounce window."""
        if self.state in (State.DISCONNECTED, State.FAILED):
            return
        self._debounce_at = now + self.settings.debounce

    def config_reloaded(self, now: float, endpoint_changed: bool) -> None:
        """Configuration was reloaded; only a changed endpoint or key needs a new handshake."""
        if endpoint_changed and self.state not in (State.DISCONNECTED, State.FAILED):
            self._trouble(now)
            self._reconnect(Cause.CONFIG_RELOAD, now)

    # -- time -----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest time at which `handle_timer` has something to do."""
        s = self.settings
        deadlines = [self._handshake_deadline, self._retry_at, self._debounce_at, self._probe_deadline]
        if self.state is State.CONNECTED and self._probe_deadline is None:
            if self._first_unanswered_tx is not None:
                deadlines.append(self._first_unanswered_tx + s.dead_peer_timeout)
            if s.idle_probe_interval > 0 and self._last_rx is not None:
                deadlines.append(self._last_rx + s.idle_probe_interval)
        if self._trouble_since is not None and s.give_up_after is not None:
            deadlines.append(self._trouble_since + s.give_up_after)
        pending = [d for d in deadlines if d is not None]
        return min(pending) if pending else None

    def handle_timer(self, now: float) -> None:
        """Run whatever is due at `now`."""
        s = self.settings
        if self.state in (State.DISCONNECTED, State.FAILED):
            return
        if (
            self._trouble_since is not None
            and s.give_up_after is not None
            and now >= self._trouble_since + s.give_up_after
        ):
            self._clear_timers()
            self._set_state(State.FAILED, self.last_cause)
            self._actions.append(GiveUp(f"no working tunnel for {s.give_up_after:.0f} s"))
            return
        if self._debounce_at is not None and now >= self._debounce_at:
            self._debounce_at = None
            self._trouble(now)
            self._reconnect(Cause.PATH_CHANGE, now)
        if self._handshake_deadline is not None and now >= self._handshake_deadline:
            self._handshake_deadline = None
            self._schedule_retry(now, Cause.HANDSHAKE_TIMEOUT)
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            self._reconnect(self._retry_cause, now)
        if self._probe_deadline is not None and now >= self._probe_deadline:
            self._probe_deadline = None
            self._trouble(now)
            self._reconnect(Cause.DEAD_PEER, now)
        if self.state is State.CONNECTED and self._probe_deadline is None:
            silent_since = None
            if (
                self._first_unanswered_tx is not None
                and now >= self._first_unanswered_tx + s.dead_peer_timeout
            ):
                silent_since = self._first_unanswered_tx
            elif (
                s.idle_probe_interval > 0
                and self._last_rx is not None
                and now >= self._last_rx + s.idle_probe_interval
            ):
                silent_since = self._last_rx
            if silent_since is not None:
                self._probe_deadline = now + s.probe_timeout
                self._first_unanswered_tx = None
                self._actions.append(Probe())

    def next_action(self) -> Action | None:
        """The next action for the I/O shell, or None."""
        return self._actions.popleft() if self._actions else None

    # -- internals ------------------------------------------------------------------------

    def _trouble(self, now: float) -> None:
        if self._trouble_since is None:
            self._trouble_since = now
        if self.state is State.CONNECTED:
            self._set_state(State.REASSERTING, None)

    def _reconnect(self, cause: Cause, now: float) -> None:
        self.attempts += 1
        self.last_cause = cause
        self.reconnects[cause] = self.reconnects.get(cause, 0) + 1
        self._retry_at = None
        self._probe_deadline = None
        self._handshake_deadline = now + self.settings.handshake_timeout
        if self.state is State.CONNECTED:
            self._set_state(State.REASSERTING, cause)
        self._actions.append(Reconnect(cause, self.attempts))

    def _schedule_retry(self, now: float, cause: Cause) -> None:
        s = self.settings
        delay = min(s.backoff_max, s.backoff_initial * 2 ** min(max(0, self.attempts - 1), 32))
        delay *= 1 + s.backoff_jitter * (2 * self.random_source() - 1)
        self._retry_at = now + delay
        self._retry_cause = Cause.RETRY if cause is Cause.HANDSHAKE_TIMEOUT else cause

    def _clear_timers(self) -> None:
        self._handshake_deadline = self._retry_at = self._debounce_at = self._probe_deadline = None
        self._trouble_since = None

    def _set_state(self, new: State, cause: Cause | None) -> None:
        if new is not self.state:
            self._actions.append(StateChanged(self.state, new, cause))
            self.state = new
