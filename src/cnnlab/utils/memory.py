"""Peak resident memory of this process, in bytes, the same way on every platform."""

from __future__ import annotations

import sys
from pathlib import Path


def peak_rss_bytes() -> int:
    """VmHWM on Linux (``ru_maxrss`` carries a parent's peak over fork + exec there); elsewhere
    ``ru_maxrss``, which macOS reports in bytes and other systems in KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)
