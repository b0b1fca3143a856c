"""The list compiler as a child process: ``python -m dnsguard.app.list_compiler`` < job > result.

A daemon runs big compiles here rather than in a thread: parsing and sorting a million names holds the
GIL for seconds at a stretch (measured: a 200 q/s stream saw 1 s stalls and lost queries while a thread
compiled 808k rules), and its few hundred MB of transient memory would stay in the daemon's heap. The
child reads the job (JSON with the hash key) on stdin, lowers its own priority, writes the compiled files
under the cache directory, and prints the result (JSON) on stdout; the daemon then maps the index.
Errors go to stderr as one line and the exit status is 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

from dnsguard.app.list_store import CompileJob, run_job
from dnsguard.errors import DnsguardError

NICENESS = 10
"""The compile yields the CPU to the daemons that serve DNS (two cores are common on gateways)."""


def main() -> int:
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    try:
        request = json.loads(sys.stdin.read())
        key = bytes.fromhex(request["key"])
        job = CompileJob.from_json(json.dumps(request["job"]))
        result = run_job(job, key)
    except (DnsguardError, OSError, ValueError, KeyError, TypeError) as exc:
        print(f"list compile failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(result.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
