"""What the connection lifecycle is told: frozen events, each carrying the time it happened.

Two kinds. Inputs come from the shell: the user, the tunnel and the path monitor report them as they
happen. Timer events are what `Lifecycle.handle_timer(now)` feeds for each deadline that is due, so a
deadline firing goes through the same transition table as everything else; fed directly (as the tests
do), a timer event fires that deadline at `now`.

`now` is CLOCK_BOOTTIME seconds, as for every core of dnsguard.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """The user brought the tunnel up."""

    now: float


@dataclass(frozen=True, slots=True)
class Stop:
    """The user stopped the tunnel: the only way besides giving up to leave the reconnecting states."""

    now: float


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A handshake with the peer finished: the tunnel carries traffic."""

    now: float


@dataclass(frozen=True, slots=True)
class AuthenticatedReceive:
    """Any packet from the peer passed authentication (data, keepalive or handshake)."""

    now: float


@dataclass(frozen=True, slots=True)
class DataSent:
    """A data packet went to the peer (the shell reports one per batch, not per packet)."""

    now: float


@dataclass(frozen=True, slots=True)
class WakeDetected:
    """The machine resumed from suspend, or the process was frozen, for `slept` seconds."""

    now: float
    slept: float


@dataclass(frozen=True, slots=True)
class PathChanged:
    """The default route, a link or an address changed."""

    now: float


@dataclass(frozen=True, slots=True)
class ConfigReloaded:
    """The configuration was reloaded; `endpoint_changed` when the peer's endpoint or key differs."""

    now: float
    endpoint_changed: bool


Input = (
    Start
    | Stop
    | HandshakeCompleted
    | AuthenticatedReceive
    | DataSent
    | WakeDetected
    | PathChanged
    | ConfigReloaded
)

# -- timer events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GiveUpDue:
    """The tunnel has been down for `give_up_after` seconds (only when that is configured)."""

    now: float


@dataclass(frozen=True, slots=True)
class DebounceElapsed:
    """The quiet period after the last path change is over."""

    now: float


@dataclass(frozen=True, slots=True)
class HandshakeTimedOut:
    """The handshake started by the last reconnection did not complete within `handshake_timeout`."""

    now: float


@dataclass(frozen=True, slots=True)
class RetryDue:
    """The backoff delay after a failed handshake has passed."""

    now: float


@dataclass(frozen=True, slots=True)
class ProbeUnanswered:
    """The probe handshake got no answer within `probe_timeout`: the peer is taken for dead."""

    now: float


@dataclass(frozen=True, slots=True)
class PeerSilent:
    """Data went unanswered for `dead_peer_timeout`, or nothing came for `idle_probe_interval`."""

    now: float


TimerEvent = GiveUpDue | DebounceElapsed | HandshakeTimedOut | RetryDue | ProbeUnanswered | PeerSilent

Event = Input | TimerEvent

INPUTS: tuple[type[Input], ...] = (
    Start,
    Stop,
    HandshakeCompleted,
    AuthenticatedReceive,
    DataSent,
    WakeDetected,
    PathChanged,
    ConfigReloaded,
)
TIMER_EVENTS: tuple[type[TimerEvent], ...] = (
    GiveUpDue,
    DebounceElapsed,
    HandshakeTimedOut,
    RetryDue,
    ProbeUnanswered,
    PeerSilent,
)
"""In the order `handle_timer` fires them when several are due at once (see machine.py)."""
