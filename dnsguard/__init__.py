"""dnsguard: a DNS-filtering tunnel that speaks WireGuard."""

from dnsguard import native

__version__ = "0.1.0"

native.activate()  # the compiled data paths, where their build matches the sources (dnsguard/native.py)
