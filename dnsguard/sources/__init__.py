"""Where list rules come from: local files, inline text, and URLs with an on-disk cache."""

from dnsguard.sources.fetch import CacheMeta, FetchError, FetchResult, ListFetcher

__all__ = ["CacheMeta", "FetchError", "FetchResult", "ListFetcher"]
