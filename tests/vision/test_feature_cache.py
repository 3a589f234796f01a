"""The frozen tower's on-disk feature cache: exactly the tower's output, computed once, invalidated when
the weights, the feature layer, the cut or the resampler change, bounded in size, never used while the
tower trains."""

import copy
import dataclasses
import os
import time

import pytest
import torch
from PIL import Image

from hires_vlm.tiny import build_tiny
from hires_vlm.vision import FeatureCache, attach_feature_cache
from hires_vlm.vision.feature_cache import namespace_for

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"vision_hidden": 32, "vision_layers": 2, "text_hidden": 64, "text_layers": 1, "vocab_size": 300}
IMAGES = [Image.new("RGB", (300, 200), (200, 10, 10)), Image.new("RGB", (120, 250), (10, 100, 30))]


@pytest.fixture()
def hd():
    model, proc = build_tiny("llava_hd", **SMALL)
    return model.eval(), proc


def _views(proc, images=IMAGES):
    return proc.image_processor(images).pixel_values


def _files(root):
    return sorted(p for p in root.rglob("*.safetensors"))


def test_the_cache_returns_exactly_the_towers_output_and_computes_each_view_once(hd, tmp_path):
    model, proc = hd
    views = _views(proc)
    tower = model.vision_tower
    with torch.no_grad():
        plain = tower(views)
    cache = attach_feature_cache(model, tmp_path, 2**30)
    calls = tower.calls
    with torch.no_grad():
        first = tower(views)
    assert tower.calls == calls + 1 and torch.equal(first, plain)
    assert len(_files(tmp_path)) == len({cache.key(v) for v in views}) and cache.misses == len(views)
    with torch.no_grad():
        again = tower(views)
    assert tower.calls == calls + 1  # no tower forward at all
    assert torch.equal(again, plain) and cache.hits == len(views)
    # A new cache on the same folder (another run, another process) reads the same features.
    fresh = attach_feature_cache(model, tmp_path, 2**30)
    with torch.no_grad():
        assert torch.equal(tower(views), plain)
    assert fresh.hits == len(views) and tower.calls == calls + 1


def test_only_the_missing_views_go_through_the_tower(hd, tmp_path):
    model, proc = hd
    tower = model.vision_tower
    attach_feature_cache(model, tmp_path, 2**30)
    seen = []
    encode = tower._encode
    tower._encode = lambda pv: (seen.append(pv.shape[0]), encode(pv))[1]
    old, new = _views(proc, IMAGES[:1]), _views(proc, [Image.new("RGB", (224, 224), (0, 0, 255))])
    with torch.no_grad():
        tower(old)
        mixed = tower(torch.cat([new, old, new]))
    tower._encode = encode
    tower.feature_cache = None
    with torch.no_grad():
        plain = tower(torch.cat([new, old, new]))
    cache = tower.feature_cache or attach_feature_cache(model, tmp_path, 2**30)
    old_keys, new_keys = {cache.key(v) for v in old}, {cache.key(v) for v in new}
    assert seen == [len(old_keys), len(new_keys - old_keys)]  # identical views once, cached ones not at all
    assert len(old_keys) < old.shape[0]  # this plain image has identical tiles: the case is exercised
    assert torch.allclose(mixed, plain, atol=1e-6)


def test_the_cache_is_invalidated_by_weights_layer_cut_and_resampler(hd, tmp_path):
    model, proc = hd
    tower = model.vision_tower
    spec = model.imaging_spec.to_dict()
    base = namespace_for(tower, spec)
    assert namespace_for(tower, spec) == base  # deterministic
    with torch.no_grad():
        views = _views(proc)
        attach_feature_cache(model, tmp_path, 2**30)
        tower(views)
        calls = tower.calls
        before = tower(views)
        assert tower.calls == calls
        next(tower.model.parameters()).add_(1e-3)  # new weights, in place: the attached cache follows
        fresh = tower(views)
        cache = tower.feature_cache
        assert cache.namespace != base
        assert tower.calls == calls + 1 and not torch.equal(fresh, before)
        tower.feature_cache = None
        assert torch.equal(fresh, tower(views))
        tower.model.load_state_dict({k: v + 0 for k, v in tower.model.state_dict().items()})  # the same values
        tower.feature_cache = cache
        assert torch.equal(tower(views), fresh) and cache.namespace != base
    namespace = cache.namespace
    tower.feature_layer = -1  # another layer: a new namespace at the next lookup
    with torch.no_grad():
        other = tower(views)
    assert cache.namespace != namespace and not torch.equal(other, fresh)
    tower.feature_layer = -2
    layer = copy.copy(tower)
    layer.feature_layer = -1
    assert namespace_for(layer, spec) != namespace_for(tower, spec)
    torch_resampler = dataclasses.replace(model.imaging_spec, resampler="torch").to_dict()
    assert namespace_for(tower, torch_resampler) != cache.namespace
    other_cut = {**spec, "tile_size": spec["tile_size"] * 2}
    assert namespace_for(tower, other_cut) != cache.namespace
    assert cache.key(views[0]) != cache.key(views[0] + 1e-6) and cache.key(views[0]) == cache.key(views[0].clone())


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(tmp_path):
    cache = FeatureCache(tmp_path, 40_000, "n" * 64)
    views = [torch.full((3, 4, 4), float(i)) for i in range(12)]
    feats = [torch.randn(64, 32) for _ in views]  # 8 KiB each: the bound holds about 4
    keys = [cache.key(v) for v in views]
    for i in range(4):
        cache.put(keys[i], feats[i])
        os.utime(cache.path(keys[i]), (time.time() - 100 + i, time.time() - 100 + i))
    assert cache.get(keys[0]) is not None  # touched: now the most recently used
    for i in range(4, 12):
        cache.put(keys[i], feats[i])
        assert cache.size_bytes <= cache.max_bytes
    assert sum(p.stat().st_size for p in _files(tmp_path)) == cache.size_bytes <= 40_000
    assert cache.get(keys[11]) is not None and torch.equal(cache.get(keys[11]), feats[11])
    assert cache.get(keys[1]) is None  # the oldest untouched went first
    with pytest.raises(ValueError, match="max_bytes must be a positive"):
        FeatureCache(tmp_path, 0, "n" * 64)


def test_an_unreadable_file_is_a_miss_and_is_written_again(hd, tmp_path):
    model, proc = hd
    views = _views(proc, IMAGES[:1])
    cache = attach_feature_cache(model, tmp_path, 2**30)
    with torch.no_grad():
        plain = model.vision_tower(views)
        broken = cache.path(cache.key(views[0]))
        broken.write_bytes(b"torn")
        calls = model.vision_tower.calls
        assert torch.equal(model.vision_tower(views), plain)
    assert model.vision_tower.calls == calls + 1
    assert torch.equal(cache.get(cache.key(views[0])), plain[0])


def test_a_trainable_tower_is_refused_the_cache_and_never_reads_it(hd, tmp_path):
    model, proc = hd
    model.vision_tower.requires_grad_(True)
    with pytest.raises(ValueError, match="the vision tower is trainable"):
        attach_feature_cache(model, tmp_path, 2**30)
    model.vision_tower.requires_grad_(False)
    attach_feature_cache(model, tmp_path, 2**30)
    model.vision_tower.requires_grad_(True)  # unfrozen afterwards: the cache steps aside
    views = _views(proc, IMAGES[:1])
    out = model.vision_tower(views)
    assert out.requires_grad and not _files(tmp_path)


def test_a_cached_training_forward_gives_the_loss_of_an_uncached_one(hd, tmp_path):
    from hires_vlm.data.llava_json import LlavaCollator

    model, proc = hd
    model.train()
    rows = []
    for im in IMAGES:
        enc = proc.encoder.encode([{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}],
                                  [proc.max_visual_tokens(im.size)])
        rows.append({"input_ids": torch.tensor(enc.input_ids), "labels": torch.tensor(enc.labels),
                     "pixel_values": proc.image_processor([im]).pixel_values, "image_sizes": torch.tensor([im.size])})
    batch = LlavaCollator(proc.tokenizer.pad_token_id)(rows)
    plain = model(**batch).loss
    attach_feature_cache(model, tmp_path, 2**30)
    model(**batch)  # fills the cache
    calls = model.vision_tower.calls
    cached = model(**batch)
    cached.loss.backward()
    assert model.vision_tower.calls == calls
    assert cached.loss.item() == pytest.approx(plain.item(), abs=1e-6)
    assert any(p.grad is not None for p in model.connector.parameters())
