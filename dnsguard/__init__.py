"""dnsguard: a DNS-filtering tunnel that speaks WireGuard."""

__version__ = "0.1.0"
