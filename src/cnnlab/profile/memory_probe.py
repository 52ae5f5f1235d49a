"""``python -m cnnlab.profile.memory_probe idle|SPEC_JSON``: run one model pass in this fresh process and
print its peak resident set size as JSON (``{"maxrss_kib": ..., "source": ...}``); ``idle`` only imports
the libraries.

On Linux the peak is ``VmHWM`` from ``/proc/self/status``: the high-water mark of this process's own
address space, which starts afresh at exec. ``ru_maxrss`` is not used there because Linux carries the
parent's peak over into a forked-and-exec'd child (a 500 MB test runner would mask a 50 MB pass).
Elsewhere ``ru_maxrss`` is used (bytes on macOS, KiB on other systems). Both through the one probe,
:func:`cnnlab.utils.memory.peak_rss_bytes`; only the subprocess around it is this module's.
"""

from __future__ import annotations

import json
import sys


def peak_rss_kib() -> tuple[int, str]:
    """This process's peak resident set size in KiB (:func:`cnnlab.utils.memory.peak_rss_bytes`), and its source."""
    from cnnlab.utils.memory import peak_rss_bytes

    source = "VmHWM" if sys.platform.startswith("linux") else "ru_maxrss"
    return peak_rss_bytes() // 1024, source


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m cnnlab.profile.memory_probe idle|SPEC_JSON", file=sys.stderr)
        return 2
    import torch

    import cnnlab.models  # noqa: F401  (the idle baseline imports the same libraries as a measured pass)
    from cnnlab.profile.memory import PassSpec, run_pass

    if argv[0] != "idle":
        spec = PassSpec(**json.loads(argv[0]))
        torch.set_num_threads(spec.threads)
        run_pass(spec, "cpu")
    kib, source = peak_rss_kib()
    print(json.dumps({"maxrss_kib": kib, "source": source}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
