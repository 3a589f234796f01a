"""Modality-length grouping: training batches of only-image or only-text samples of similar length.

LLaVA-1.5 trains with ``group_by_modality_length``: text-only samples (ShareGPT) and samples with
an image are never mixed in one batch, and each batch holds samples of similar length, so that a
batch pads little (or, packed, its samples cost alike) and a text-only batch needs no image. This
is our own implementation of that idea as a *batch* sampler, so that every batch is pure — a
sampler that only orders indices cannot keep the two modalities' last, partial batches apart.

One epoch, for a seed and the epoch number (so a resumed run draws the same batches):

1. each modality's records are shuffled and cut into *megabatches* of ``batch_size × group``
   records. LLaVA's ``group`` is one optimizer step (data-parallel ranks × gradient-accumulation
   steps): the step is still a random draw, only its micro-batches are sorted, so no rank waits
   for a long one — and on one device without accumulation nothing is sorted. A larger ``group``
   (the ``length_grouping_batches`` training key) groups lengths more tightly, as transformers'
   ``group_by_length`` does with 50 batches, at the price of steps that are no longer random draws;
2. each megabatch is sorted by length, longest first, and cut into batches of ``batch_size`` (a
   modality's last megabatch may be smaller; its last batch may be short);
3. the full megabatches are shuffled, the one holding the longest of their records goes first (a
   batch that does not fit in memory fails at the first step, not hours in), the partial ones last;
4. ``drop_last`` leaves out the short batches; with several ranks, the batches are padded by
   repeating the first ones to a multiple of the ranks (as ``DistributedSampler`` repeats samples),
   and rank r takes batches r, r + R, ….

Lengths are LM tokens after image expansion (``data.lengths.dataset_lengths``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Sampler


class ModalityLengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions, each of one modality and of similar lengths (see the module docstring)."""

    def __init__(self, lengths: Sequence[int], has_image: Sequence[bool], batch_size: int, *, group: int = 1,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0, drop_last: bool = False):
        if len(lengths) != len(has_image):
            raise ValueError(f"{len(lengths)} lengths but {len(has_image)} modality flags; give one of each per sample")
        if not len(lengths):
            raise ValueError("modality-length grouping needs at least one sample")
        for name, v in (("batch_size", batch_size), ("group", group), ("num_replicas", num_replicas)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not one of the {num_replicas} replicas")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.has_image = np.asarray(has_image, dtype=bool)
        self.batch_size, self.group = batch_size, group
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.drop_last = bool(drop_last)  # leave out the short batches (at most one per modality)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose batches ``__iter__`` yields (the Trainer calls this before every epoch)."""
        self.epoch = int(epoch)

    def _megabatches(self, positions: np.ndarray, rng: np.random.Generator) -> list[list[list[int]]]:
        order = positions[rng.permutation(len(positions))]
        size = self.batch_size * self.group
        out = []
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            out.append([chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)])
        return out

    def batches(self) -> list[list[int]]:
        """Every rank's batches of the current epoch, in order (before the split across ranks)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        full, partial = [], []
        for flag in (True, False):
            positions = np.flatnonzero(self.has_image == flag)
            for mb in self._megabatches(positions, rng):
                (full if sum(len(b) for b in mb) == self.batch_size * self.group else partial).append(mb)
        full = [full[i] for i in rng.permutation(len(full))]
        if full:
            longest = max(range(len(full)), key=lambda i: int(self.lengths[full[i][0][0]]))
            full.insert(0, full.pop(longest))
        out = [b for mb in full + partial for b in mb if not (self.drop_last and len(b) < self.batch_size)]
        if not out:
            raise ValueError(f"drop_last leaves no batch: every modality has fewer than batch_size={self.batch_size} "
                             "samples")
        if self.num_replicas > 1 and len(out) % self.num_replicas:
            extra = self.num_replicas - len(out) % self.num_replicas
            out += [out[i % len(out)] for i in range(extra)]
        return out

    def __iter__(self):
        yield from self.batches()[self.rank::self.num_replicas]

    def __len__(self) -> int:
        n = 0
        for flag in (True, False):
            count = int((self.has_image == flag).sum())
            size = self.batch_size * self.group
            rest = count % size
            n += (count // size) * self.group + (rest // self.batch_size if self.drop_last
                                                  else -(-rest // self.batch_size))
        return -(-n // self.num_replicas)
