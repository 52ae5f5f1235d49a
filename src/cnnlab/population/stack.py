"""Many models of one architecture as one object: stacked parameters and buffers, vmapped forward.

A :class:`Population` holds M members as tensors with a leading member dimension (the layout of
``torch.func.stack_module_state``) plus one meta-device skeleton of the architecture, so a forward of all
members is one ``vmap(functional_call)``. It converts to and from M ordinary modules and to and from a
flat parameter vector per member (what evolution strategies perturb).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from cnnlab.population.bn import bn_batch_statistics

RANDOMNESS = ("different", "same", "error")


@dataclass(frozen=True)
class ParamLayout:
    """Where each named parameter sits in a flat vector: names, shapes and offsets, in order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, params: dict[str, Tensor], names: Sequence[str] | None = None, batched: bool = False) -> "ParamLayout":
        names = tuple(names if names is not None else params)
        return cls(names, tuple(tuple(params[n].shape[1:] if batched else params[n].shape) for n in names))

    @property
    def numels(self) -> list[int]:
        return [int(torch.Size(s).numel()) for s in self.shapes]

    @property
    def size(self) -> int:
        """P, the length of the flat vector."""
        return sum(self.numels)

    def flatten(self, params: dict[str, Tensor], batched: bool = False) -> Tensor:
        """(M, P) from stacked params when ``batched``, else (P,)."""
        if batched:
            lead = next(iter(params.values())).shape[0] if params else 0
            return torch.cat([params[n].reshape(lead, -1) for n in self.names], 1)
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, vector: Tensor) -> dict[str, Tensor]:
        """Named views into ``vector`` ((P,) or (M, P)); no copy."""
        if vector.shape[-1] != self.size:
            raise ValueError(f"vector has {vector.shape[-1]} entries per member, the layout needs {self.size}")
        lead = tuple(vector.shape[:-1])
        parts = torch.split(vector, self.numels, dim=-1)
        return {n: p.reshape(*lead, *s) for n, p, s in zip(self.names, parts, self.shapes)}


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A parameter-free copy of ``model``'s architecture on the meta device (for ``functional_call``)."""
    return copy.deepcopy(model).to("meta")


def stacked_forward(
    skeleton: nn.Module,
    stacked: dict[str, Tensor],
    x: Tensor,
    *,
    shared: dict[str, Tensor] | None = None,
    per_member: bool = False,
    randomness: str = "different",
    chunk_size: int | None = None,
) -> Tensor:
    """Outputs (M, B, ...) of ``skeleton`` run with each member's tensors.

    ``stacked``: params/buffers with a leading member dimension (vmapped, in_dims 0); ``shared``: tensors
    every member uses unchanged (in_dims None). ``x``: one batch for all members (B, ...) or, with
    ``per_member``, one batch per member (M, B, ...). ``chunk_size``: members per vmapped call, to bound
    memory; in-place BatchNorm updates land in ``stacked`` either way.
    """
    if randomness not in RANDOMNESS:
        raise ValueError(f"randomness must be one of {RANDOMNESS}, got {randomness!r}")
    if not stacked:
        raise ValueError("stacked holds no tensors: nothing to vmap over")
    m = next(iter(stacked.values())).shape[0]
    if per_member and x.shape[0] != m:
        raise ValueError(f"per-member inputs need a leading dimension of {m} (one batch per member), got shape {tuple(x.shape)}")
    shared = shared or {}

    def one(st: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(skeleton, (st, shared), (xi,))

    fn = vmap(one, in_dims=(0, 0 if per_member else None), randomness=randomness)
    if chunk_size is None or chunk_size >= m:
        return fn(stacked, x)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    outs = []
    for s in range(0, m, chunk_size):
        part = {k: v[s:s + chunk_size] for k, v in stacked.items()}
        outs.append(fn(part, x[s:s + chunk_size] if per_member else x))
    return torch.cat(outs)


class Population:
    """M models of one architecture, stored stacked.

    ``params`` / ``buffers``: dicts of tensors shaped (M, ...). ``trainable``: names of the parameters that
    require grad in the original models (the ones ``to_vector`` covers); the others (frozen parameters) are
    carried along. ``skeleton``: the architecture on the meta device; its train/eval flag is set per call.
    """

    def __init__(self, skeleton: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor],
                 trainable: Sequence[str] | None = None):
        if not params:
            raise ValueError("a population needs at least one parameter tensor")
        sizes = {n: t.shape[0] for n, t in {**params, **buffers}.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"all stacked tensors need the same leading (member) size, got {sizes}")
        self.skeleton = skeleton if _is_meta(skeleton) else meta_skeleton(skeleton)
        self.params = params
        self.buffers = buffers
        self.trainable = tuple(trainable if trainable is not None else params)
        unknown = [n for n in self.trainable if n not in params]
        if unknown:
            raise ValueError(f"trainable names {unknown} are not parameters of the population")
        self.layout = ParamLayout.of(params, self.trainable, batched=True)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_models(cls, models: Sequence[nn.Module]) -> "Population":
        """Stack M modules of one architecture (copies; the modules are left untouched)."""
        models = list(models)
        if not models:
            raise ValueError("from_models needs at least one model")
        first = models[0]
        ref_p = {n: p for n, p in first.named_parameters()}
        ref_b = {n: b for n, b in first.named_buffers()}
        for i, m in enumerate(models[1:], start=1):
            if type(m) is not type(first):
                raise ValueError(f"member {i} is a {type(m).__name__}, member 0 a {type(first).__name__}: one architecture only")
            _check_same(i, "parameter", ref_p, dict(m.named_parameters()))
            _check_same(i, "buffer", ref_b, dict(m.named_buffers()))
        params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n in ref_p}
        buffers = {n: torch.stack([dict(m.named_buffers())[n].detach() for m in models]) for n in ref_b}
        trainable = [n for n, p in ref_p.items() if p.requires_grad]
        return cls(meta_skeleton(first), params, buffers, trainable)

    @classmethod
    def create(cls, name: str, size: int, master_seed: int, device: str | torch.device = "cpu", **model_kwargs) -> "Population":
        """``size`` registry models, member i initialised by ``create_deterministic_model(master_seed, name, f"member/{i}")``."""
        from cnnlab.models import create_deterministic_model

        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        models = [create_deterministic_model(master_seed, name, f"member/{i}", **model_kwargs) for i in range(size)]
        return cls.from_models(models).to(device)

    # ------------------------------------------------------------------ properties
    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def __len__(self) -> int:
        return self.size

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def num_params(self) -> int:
        """P: trainable parameters per member (the flat vector's length)."""
        return self.layout.size

    def __repr__(self) -> str:
        return f"Population({type(self.skeleton).__name__} x {self.size}, {self.num_params:,} trainable params each, {self.device})"

    def to(self, device: str | torch.device) -> "Population":
        return Population(self.skeleton, {n: t.to(device) for n, t in self.params.items()},
                          {n: t.to(device) for n, t in self.buffers.items()}, self.trainable)

    def select(self, members: Sequence[int] | Tensor) -> "Population":
        """A new population of the given members (copies)."""
        idx = torch.as_tensor(members, dtype=torch.long, device=self.device)
        return Population(self.skeleton, {n: t.index_select(0, idx) for n, t in self.params.items()},
                          {n: t.index_select(0, idx) for n, t in self.buffers.items()}, self.trainable)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, *, per_member: bool = False, train: bool = False, bn: str = "auto",
                randomness: str = "different", chunk_size: int | None = None) -> Tensor:
        """Outputs (M, B, ...) of every member.

        ``x``: one batch (B, ...) for all members, or with ``per_member`` one batch each (M, B, ...).
        ``train``: train mode (dropout active; BatchNorm normalises with batch statistics and updates each
        member's running statistics in ``self.buffers``, like M separate train-mode forwards).
        ``bn="batch"``: BatchNorm uses batch statistics without touching running statistics, whatever
        ``train`` says (what ES fitness evaluation wants). ``randomness``: vmap's rule for dropout masks,
        "different" per member or "same" for all.
        """
        if bn not in ("auto", "batch"):
            raise ValueError(f"bn must be 'auto' or 'batch', got {bn!r}")
        self.skeleton.train(train)
        ctx = bn_batch_statistics(self.skeleton) if bn == "batch" else contextlib.nullcontext()
        with ctx:
            return stacked_forward(self.skeleton, {**self.params, **self.buffers}, x, per_member=per_member,
                                   randomness=randomness, chunk_size=chunk_size)

    __call__ = forward

    # ------------------------------------------------------------------ members
    def member(self, i: int) -> nn.Module:
        """Member ``i`` as an ordinary module (a copy, in eval mode)."""
        if not -self.size <= i < self.size:
            raise IndexError(f"member index {i} out of range for a population of {self.size}")
        m = copy.deepcopy(self.skeleton).to_empty(device=self.device)
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.copy_(self.params[n][i])
                p.requires_grad_(n in self.trainable)
            for n, b in m.named_buffers():
                b.copy_(self.buffers[n][i])
        return m.eval()

    def unstack(self) -> list[nn.Module]:
        """All members as M ordinary modules."""
        return [self.member(i) for i in range(self.size)]

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.unstack())

    # ------------------------------------------------------------------ flat vectors
    def to_vector(self) -> Tensor:
        """(M, P): each member's trainable parameters flattened in ``self.layout`` order (a copy)."""
        return self.layout.flatten(self.params, batched=True)

    def from_vector(self, vectors: Tensor) -> "Population":
        """A new population whose trainable parameters come from ``vectors`` (M', P); frozen parameters and
        buffers are taken from member 0 when M' differs from M, else member by member."""
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be (members, P), got shape {tuple(vectors.shape)}")
        new_m = vectors.shape[0]
        params = {n: t.detach().clone() for n, t in self.layout.unflatten(vectors.to(self.device)).items()}

        def carry(t: Tensor) -> Tensor:
            return t.clone() if new_m == self.size else t[:1].expand(new_m, *t.shape[1:]).clone()

        for n, t in self.params.items():
            if n not in params:
                params[n] = carry(t)
        return Population(self.skeleton, {n: params[n] for n in self.params}, {n: carry(b) for n, b in self.buffers.items()},
                          self.trainable)

    def state_dict(self) -> dict:
        """Plain tensors (loadable with ``torch.load(weights_only=True)``)."""
        return {"params": self.params, "buffers": self.buffers, "trainable": list(self.trainable)}

    @classmethod
    def from_state_dict(cls, model: nn.Module, state: dict) -> "Population":
        """Rebuild from :meth:`state_dict` and a module of the architecture (any device, any weights)."""
        return cls(meta_skeleton(model), state["params"], state["buffers"], state["trainable"])


def _is_meta(model: nn.Module) -> bool:
    tensors = list(model.parameters()) + list(model.buffers())
    return bool(tensors) and all(t.is_meta for t in tensors)


def _check_same(i: int, kind: str, ref: Mapping[str, Tensor], got: Mapping[str, Tensor]) -> None:
    if list(ref) != list(got):
        missing = [n for n in ref if n not in got]
        extra = [n for n in got if n not in ref]
        raise ValueError(f"member {i} has different {kind}s than member 0 (missing {missing[:3]}, extra {extra[:3]})")
    for n, t in ref.items():
        if got[n].shape != t.shape or got[n].dtype != t.dtype:
            raise ValueError(f"member {i}: {kind} {n!r} is {got[n].dtype} {tuple(got[n].shape)}, "
                             f"member 0 has {t.dtype} {tuple(t.shape)}")
