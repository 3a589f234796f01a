"""Pixel operations: every Pillow mode, EXIF, bad files, tiles that cover every pixel once."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from hires_vlm.imaging import ImageLoadError, load_image, ops, to_rgb


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "YCbCr", "RGB"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new(mode, (7, 5))
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (7, 5)


def test_transparency_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    assert to_rgb(img).getpixel((0, 0)) == (255, 0, 0)
    p = Image.new("P", (4, 4), 0)
    p.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    p.info["transparency"] = 0
    assert to_rgb(p).getpixel((0, 0)) == (255, 255, 255)


def test_16bit_grey_is_rescaled_not_clipped():
    arr = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    out = np.asarray(to_rgb(img))
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255 and 120 < out[1, 0, 0] < 135


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    path = _save(img, tmp_path / "r.jpg", exif=exif.tobytes())
    assert load_image(path).size == (10, 20)


def test_missing_truncated_and_non_image_files(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.png")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, "PNG")
    (tmp_path / "trunc.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="trunc.png"):
        load_image(tmp_path / "trunc.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageLoadError, match="text.png"):
        load_image(tmp_path / "text.png")


def test_huge_image_is_refused_before_decoding(tmp_path):
    path = _save(Image.new("L", (300, 300)), tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="pixels"):
        load_image(path, max_pixels=300 * 300 - 1)


def test_one_pixel_image_goes_through_every_view():
    from hires_vlm.imaging import HiResImageProcessor, ImagingSpec

    spec = ImagingSpec(tile_size=28, grid_rule="anyres", local_tiles=True, global_view="pad")
    batch = HiResImageProcessor(spec)([Image.new("RGB", (1, 1), (9, 9, 9))])
    assert batch.pixel_values.shape[1:] == (3, 28, 28) and torch.isfinite(batch.pixel_values).all()


@pytest.mark.parametrize("cols,rows,s", [(1, 1, 4), (3, 2, 5), (2, 3, 3), (4, 1, 2)])
def test_tiles_cover_every_pixel_once_and_invert(cols, rows, s):
    canvas = torch.arange(2 * rows * s * cols * s, dtype=torch.float32).reshape(2, rows * s, cols * s)
    for cut, merge in ((ops.cut_tiles, ops.merge_tiles), (ops.cut_strided, ops.merge_strided)):
        tiles = cut(canvas, cols, rows, s)
        assert tiles.shape == (rows * cols, 2, s, s)
        assert sorted(tiles.flatten().tolist()) == sorted(canvas.flatten().tolist())
        assert torch.equal(merge(tiles, cols, rows), canvas)


def test_contiguous_and_strided_tile_contents():
    cols, rows, s = 3, 2, 4
    canvas = torch.zeros(2, rows * s, cols * s)
    ys, xs = torch.meshgrid(torch.arange(rows * s), torch.arange(cols * s), indexing="ij")
    canvas[0], canvas[1] = ys, xs
    t = ops.cut_tiles(canvas, cols, rows, s)
    i, j = 1, 2  # tile k = i*cols + j
    assert torch.equal(t[i * cols + j, 0], ys[i * s:(i + 1) * s, j * s:(j + 1) * s].float())
    st = ops.cut_strided(canvas, cols, rows, s)
    v, u = 3, 1  # pixel (u, v) of strided tile (i, j) is image pixel (x, y) = (j + u*cols, i + v*rows)
    assert st[i * cols + j, 0, v, u] == i + v * rows and st[i * cols + j, 1, v, u] == j + u * cols


def test_resize_and_pad_centres_content_like_llava():
    img = Image.new("RGB", (300, 200), (255, 255, 255))
    out = ops.resize_and_pad(img, (336, 672))
    assert out.size == (336, 672)
    left, top, right, bottom = ops.content_box((300, 200), (336, 672))
    # ceil(200 * (336/300)) is 225 in floating point, as in LLaVA and transformers (not 224).
    assert (left, right) == (0, 336) and bottom - top == 225
    arr = np.asarray(out)
    assert arr[top + 5, 10].tolist() == [255, 255, 255] and arr[top - 1, 10].tolist() == [0, 0, 0]


def test_normalize_matches_formula():
    img = Image.new("RGB", (2, 2), (255, 0, 128))
    t = ops.normalize(img, (0.5, 0.5, 0.5), (0.5, 0.25, 0.5))
    assert torch.allclose(t[:, 0, 0], torch.tensor([1.0, -2.0, (128 / 255 - 0.5) / 0.5]), atol=1e-5)


def test_truncated_files_are_refused_even_when_another_library_allows_them(tmp_path):
    """lmms-eval's task module sets ImageFile.LOAD_TRUNCATED_IMAGES = True at import (Pillow then fills
    the missing rows with grey); load_image still refuses the file, and leaves the setting as it was."""
    import io

    import numpy as np
    from PIL import ImageFile

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (tmp_path / "t.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageLoadError, match="truncated"):
            load_image(tmp_path / "t.png")
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before
