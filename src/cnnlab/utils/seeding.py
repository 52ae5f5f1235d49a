"""Seed paths: every random thing derives from a master seed plus a readable instance id."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(master_seed: int, instance_id: str | int) -> int:
    """A 63-bit seed from SHA-256 of ``"{master_seed}/{instance_id}"``: stable across runs and machines."""
    digest = hashlib.sha256(f"{int(master_seed)}/{instance_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(master_seed: int, instance_id: str | int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded from the seed path ``(master_seed, instance_id)``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(master_seed, instance_id))
    return gen


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global RNGs (for code we do not control; ours uses generators)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


class fork_rng_seeded:
    """Context manager: run a block under torch's global RNG seeded with ``seed``, then restore it.

    Used where a library (e.g. nn.Module init) draws from the global generator.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self._ctx = None

    def __enter__(self):
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        self._ctx = torch.random.fork_rng(devices=devices)
        self._ctx.__enter__()
        torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
