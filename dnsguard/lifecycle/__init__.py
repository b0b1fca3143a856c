"""Tunnel lifecycle: states, wake and path-change handling, debounced reconnection with backoff.

The transitions are one table, `machine.TRANSITIONS`; the events it is keyed by are in `events`.
"""

from dnsguard.lifecycle.clock import Wake, WakeDetector, boottime, monotonic
from dnsguard.lifecycle.machine import (
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
    Transition,
)

__all__ = [
    "TRANSITIONS",
    "Action",
    "Cause",
    "GiveUp",
    "Lifecycle",
    "LifecycleError",
    "LifecycleSettings",
    "Probe",
    "Reconnect",
    "State",
    "StateChanged",
    "Transition",
    "Wake",
    "WakeDetector",
    "boottime",
    "monotonic",
]
