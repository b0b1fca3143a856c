"""Safe search: the search engines' own 'restricted' endpoints, answered as CNAMEs.

Each engine publishes a host name that serves only its filtered results; pointing the engine's
names at it (by CNAME) enforces the filter for every browser and app on the network.
"""

from __future__ import annotations

import re

# Google serves search on www.google.<country suffix>; forcesafesearch.google.com is its
# documented SafeSearch-locked address.
_GOOGLE_RE = re.compile(r"^(www\.)?google\.(com|[a-z]{2}|co\.[a-z]{2}|com\.[a-z]{2})$")

_EXACT: dict[str, str] = {
    "www.bing.com": "strict.bing.com",
    "bing.com": "strict.bing.com",
    "duckduckgo.com": "safe.duckduckgo.com",
    "www.duckduckgo.com": "safe.duckduckgo.com",
    "start.duckduckgo.com": "safe.duckduckgo.com",
    "html.duckduckgo.com": "safe.duckduckgo.com",
    "www.youtube.com": "restrict.youtube.com",
    "m.youtube.com": "restrict.youtube.com",
    "youtube.com": "restrict.youtube.com",
    "youtubei.googleapis.com": "restrict.youtube.com",
    "youtube.googleapis.com": "restrict.youtube.com",
    "www.youtube-nocookie.com": "restrict.youtube.com",
    "yandex.ru": "familysearch.yandex.ru",
    "www.yandex.ru": "familysearch.yandex.ru",
    "yandex.com": "familysearch.yandex.ru",
    "www.yandex.com": "familysearch.yandex.ru",
    "www.ecosia.org": "strict-safe-search.ecosia.org",
    "pixabay.com": "safesearch.pixabay.com",
}


def safe_search_target(name: str) -> str | None:
    """The restricted host a search-engine name must be answered with, or None."""
    target = _EXACT.get(name)
    if target is not None:
        return target
    if "google." in name and _GOOGLE_RE.match(name):
        return "forcesafesearch.google.com"
    return None
