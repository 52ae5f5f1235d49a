"""The one way cnnlab starts or joins Ray: a cluster at ``address``, or a small local instance."""

from __future__ import annotations

import os
from typing import Any, Optional

#: object store of a local Ray that cnnlab starts (bytes; override with CNNLAB_RAY_OBJECT_STORE). cnnlab's
#: tasks pass run indices, metrics and parameter vectors, so a few hundred MiB is plenty, where Ray's
#: default (30% of RAM in /dev/shm per instance) crowds out the training processes on a small machine.
LOCAL_OBJECT_STORE = 512 * 2**20


def init_ray(ray: Any, address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Connect to ``address`` or start a local Ray with ``num_cpus`` CPUs, unless one is running already.

    Returns True when this call started (or joined) it, so the caller knows to shut it down.
    """
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        store = int(os.environ.get("CNNLAB_RAY_OBJECT_STORE", LOCAL_OBJECT_STORE))
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, object_store_memory=store)
    return True
