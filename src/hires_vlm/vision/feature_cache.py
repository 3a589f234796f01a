"""A content-addressed, size-bounded on-disk cache of a frozen vision tower's features.

A stage that freezes the tower computes the same features of the same views every epoch, and every
rerun; with the cache each view goes through the tower once. The **key** of a view is the SHA-256 of
its pixels — the exact bytes the tower is given, with their dtype and shape — inside a
**namespace**: the SHA-256 of everything else that decides the output, i.e. the tower's class,
config and weights, the feature layer, the dtype it runs in, and the imaging spec the views are cut
by (view geometry, resampler, normalisation). New weights, another layer, another cut or resampler
make a new namespace whose entries the old ones never answer; those age out. A cache attached to a
tower follows it: when the tower's weights change in place (an optimizer step, ``load_state_dict``:
PyTorch counts every in-place write of a tensor) or its feature layer or dtype change, the namespace
is computed again before the next lookup.

Files: ``<root>/<namespace[:16]>/<key[:2]>/<key>.safetensors``, one ``[t x d]`` tensor each, written
to a temporary name and renamed, so processes can share a root and a torn file is never read (an
unreadable one is a miss, and is written again). ``max_bytes`` bounds the whole root: when a write
takes it over, the least recently used files (a hit touches its file) are removed until it is at
90 % of the bound. A hit returns the stored tensor bit for bit: what the tower computed for that
view when it was stored.

Shapes: views ``[v x c x S x S]`` → features ``[v x t x d]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

TENSOR = "features"
SUFFIX = ".safetensors"


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    return memoryview(t.view(torch.uint8).numpy()).cast("B") if t.numel() else memoryview(b"")


def weights_version(tower) -> tuple:
    """Changes whenever the tower's output could: any in-place write to a weight (PyTorch's version
    counter), a replaced tensor, another feature layer or dtype. Cheap: no tensor is read."""
    tensors = list(tower.model.parameters()) + list(tower.model.buffers())
    return (tower.feature_layer, str(tower.dtype), tuple((id(t), t._version) for t in tensors))


def namespace_for(tower, imaging: dict | None = None) -> str:
    """The namespace of a :class:`~hires_vlm.vision.VisionTower` (weights, config, layer, dtype) and the
    imaging spec (a dict: geometry, resampler, normalisation) its views come from."""
    h = hashlib.sha256()
    head = {"class": type(tower.model).__name__, "config": tower.model.config.to_dict(),
            "feature_layer": tower.feature_layer, "dtype": str(tower.dtype), "imaging": imaging or {}}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for name, tensor in sorted(tower.model.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(_tensor_bytes(tensor))
    return h.hexdigest()


class FeatureCache:
    """Features of views by content, under one namespace, in a folder of bounded size."""

    def __init__(self, root: str | os.PathLike, max_bytes: int, namespace: str):
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._set_namespace(namespace)
        self.hits = self.misses = 0
        self._size = self._scan_size()
        self._tower = self._imaging = self._version = None

    def follow(self, tower, imaging: dict | None = None) -> None:
        """Recompute the namespace from ``tower`` whenever its weights change (see the module docstring)."""
        self._tower, self._imaging, self._version = tower, imaging, weights_version(tower)

    def _set_namespace(self, namespace: str) -> None:
        self.namespace = namespace
        self.folder = self.root / namespace[:16]
        self.folder.mkdir(parents=True, exist_ok=True)

    def check_current(self) -> None:
        """Before a lookup: a followed tower whose weights changed gets its new namespace."""
        if self._tower is None:
            return
        version = weights_version(self._tower)
        if version != self._version:
            self._set_namespace(namespace_for(self._tower, self._imaging))
            self._version = version
            logger.info("feature cache: the tower changed; new namespace %s…", self.namespace[:12])

    def _scan_size(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob(f"*{SUFFIX}") if p.is_file())

    def key(self, view: torch.Tensor) -> str:
        h = hashlib.sha256(self.namespace.encode())
        h.update(f"{view.dtype}:{tuple(view.shape)}".encode())
        h.update(_tensor_bytes(view))
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}{SUFFIX}"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        try:
            tensor = load_file(str(path))[TENSOR]
        except (OSError, KeyError, ValueError, RuntimeError, SafetensorError):
            # absent, being evicted by another process, or unreadable: compute it again
            if path.exists():
                logger.warning("feature cache: %s is unreadable; computing the view again", path)
            return None
        try:
            os.utime(path)  # recently used: the last to be evicted
        except OSError:
            pass
        return tensor

    def put(self, key: str, features: torch.Tensor) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=path.parent)
        os.close(fd)
        try:
            save_file({TENSOR: features.detach().to("cpu").contiguous()}, tmp)
            size = os.path.getsize(tmp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._size += size
        if self._size > self.max_bytes:
            self.evict()

    def evict(self) -> None:
        """Remove the least recently used files until the root holds at most 90 % of ``max_bytes``."""
        files = []
        for p in self.root.rglob(f"*{SUFFIX}"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        target = int(0.9 * self.max_bytes)
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if total <= target:
                break
            try:
                p.unlink()
                total -= size
            except OSError:
                pass
        self._size = total

    @property
    def size_bytes(self) -> int:
        return self._size

    def features(self, views: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The features of ``views``: stored ones read back, the others from one ``compute`` call on
        just those views (identical views computed once), then stored."""
        self.check_current()
        keys = [self.key(v) for v in views]
        found: dict[str, torch.Tensor] = {}
        for k in dict.fromkeys(keys):
            t = self.get(k)
            if t is not None:
                found[k] = t
        todo = [k for k in dict.fromkeys(keys) if k not in found]
        self.hits += sum(k in found for k in keys)
        self.misses += len(keys) - sum(k in found for k in keys)
        computed: dict[str, torch.Tensor] = {}
        if todo:
            first = {k: keys.index(k) for k in todo}
            out = compute(views[[first[k] for k in todo]])
            for k, feats in zip(todo, out):
                computed[k] = feats
                self.put(k, feats)
        ref = next(iter(computed.values())) if computed else None
        device = ref.device if ref is not None else views.device
        rows = [computed[k] if k in computed else found[k].to(device) for k in keys]
        return torch.stack(rows, 0)


def attach_feature_cache(model, root: str | os.PathLike, max_bytes: int) -> FeatureCache:
    """Give ``model`` (a ``HiResVLM``) a feature cache for its frozen tower; refused while the tower trains."""
    tower = model.vision_tower
    if getattr(tower, "native", False):
        raise ValueError("the feature cache stores the features of S×S views; a native-resolution tower (qwen2vl) "
                         "takes each image at its own size: drop feature_cache for this model")
    if not tower.is_frozen:
        raise ValueError("the vision tower is trainable: its features change every step, so they cannot be "
                         "cached; freeze it (leave vision_tower out of the stage's trainable) or drop feature_cache")
    spec = model.imaging_spec.to_dict()
    cache = FeatureCache(root, max_bytes, namespace_for(tower, spec))
    cache.follow(tower, spec)
    tower.feature_cache = cache
    return cache
