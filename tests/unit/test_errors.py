"""The exception hierarchy, as a test: every exception class of dnsguard has DnsguardError as its root."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import dnsguard
from dnsguard.errors import (
    ConfigError,
    DnsguardError,
    NetworkError,
    NotAvailableError,
    PrivilegeError,
    ProtocolError,
    UsageError,
)


def defined_exceptions() -> list[type[BaseException]]:
    """Every exception class defined (not merely imported) in a module of dnsguard/."""
    found: list[type[BaseException]] = []
    for module_info in pkgutil.walk_packages(dnsguard.__path__, "dnsguard."):
        if module_info.name.endswith("__main__"):
            continue  # running it is its only purpose
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.append(value)
    return found


EXCEPTIONS = defined_exceptions()


def test_the_walk_finds_the_exceptions_of_every_layer() -> None:
    modules = {cls.__module__.split(".")[1] for cls in EXCEPTIONS}
    assert {"errors", "config", "dns", "filter", "lifecycle", "net", "app"} <= modules


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_every_exception_derives_from_dnsguard_error(cls: type[BaseException]) -> None:
    assert issubclass(cls, DnsguardError), f"{cls.__module__}.{cls.__qualname__} is not a DnsguardError"


@pytest.mark.parametrize("cls", [ConfigError, NotAvailableError, PrivilegeError])
def test_caller_misuse_is_a_usage_error_and_never_a_remote_fault(cls: type[DnsguardError]) -> None:
    assert issubclass(cls, UsageError)
    assert not issubclass(cls, ProtocolError | NetworkError)


def test_remote_faults_are_not_usage_errors() -> None:
    assert not issubclass(ProtocolError, UsageError)
    assert not issubclass(NetworkError, UsageError)
