"""Tunnel lifecycle: states, wake and path-change handling, debounced reconnection with backoff."""

from dnsguard.lifecycle.clock import Wake, WakeDetector, boottime, monotonic
from dnsguard.lifecycle.machine import (
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

__all__ = [
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
    "Wake",
    "WakeDetector",
    "boottime",
    "monotonic",
]
