"""An ``image_url`` of a request → a decoded RGB image, within the server's limits, or an :class:`APIError`.

* ``data:image/…;base64,…`` — always accepted. The encoded size is checked before base64 is
  decoded, and the image goes through :func:`hires_vlm.imaging.load_image_bytes`: its pixel count
  and side are read from the header and refused (``max_image_pixels``, 65 536 px) before a pixel
  is decoded, so a decompression bomb costs nothing; a truncated or non-image payload is refused.
* ``file:///…`` or a plain path — only when the operator named a folder
  (``--allow-local-images DIR``), and only inside it: a relative path is taken inside the folder;
  ``..`` escapes and symlinks that leave it are refused (403), with
  :func:`hires_vlm.fsio.resolve_inside`, the rule every command of this project uses.
* ``http(s)://`` — refused: the server fetches nothing from the network.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from urllib.parse import unquote, urlparse

from PIL import Image

from ..fsio import PathOutsideError, is_inside, resolve_inside
from ..imaging import ImageLoadError, load_image, load_image_bytes
from .errors import PERMISSION, APIError, bad_request
from .schema import ImageRef

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def fetch_image(ref: ImageRef, *, max_bytes: int, max_pixels: int, local_root: str | None = None,
                pixels_left: int | None = None):
    """The image ``ref`` names, as an RGB PIL image. ``pixels_left``: what the request's earlier images
    left of its pixel budget (checked from the header too)."""
    url = ref.url
    if url[:5].lower() == "data:":
        return _from_data_url(url, ref.param, max_bytes, max_pixels, pixels_left)
    if url.lower().startswith(("http://", "https://")):
        raise bad_request(f"'{ref.param}': this server does not fetch images from the network; send the image as a "
                          "data URL (data:image/png;base64,…)", ref.param, "remote_image_url")
    if _SCHEME.match(url) and url[:7].lower() != "file://":
        raise bad_request(f"'{ref.param}': URL scheme {url.split(':', 1)[0]!r} is not supported; send a data URL",
                          ref.param, "unsupported_image_url")
    return _from_local_file(url, ref.param, local_root, max_bytes, max_pixels, pixels_left)


def _from_data_url(url: str, param: str, max_bytes: int, max_pixels: int, pixels_left: int | None):
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise bad_request(f"'{param}' is not a valid data URL: no ',' after the media type", param,
                          "invalid_image_url")
    fields = [f.strip().lower() for f in header.split(";")]
    media = fields[0] or "text/plain"
    if not media.startswith("image/"):
        raise bad_request(f"'{param}' is a data URL of type {media!r}, not an image (data:image/png;base64,…)",
                          param, "unsupported_image_type")
    if "base64" not in fields[1:]:
        raise bad_request(f"'{param}': image data URLs must be base64-encoded (data:{media};base64,…)", param,
                          "invalid_image_url")
    if len(payload) > (max_bytes + 2) // 3 * 4 + 64:  # before decoding: 4 characters carry 3 bytes
        raise bad_request(f"'{param}': the image is larger than this server's limit of {max_bytes} bytes", param,
                          "image_too_large")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise bad_request(f"'{param}': the data URL's payload is not valid base64 ({err})", param,
                          "invalid_base64") from None
    if len(data) > max_bytes:
        raise bad_request(f"'{param}': the image has {len(data)} bytes, more than this server's limit of {max_bytes}",
                          param, "image_too_large")
    if not data:
        raise bad_request(f"'{param}': the data URL holds no bytes", param, "invalid_image")
    _check_budget(io.BytesIO(data), param, pixels_left)
    return _decoded(lambda: load_image_bytes(data, "from the data URL", max_pixels), param)


def _from_local_file(url: str, param: str, root: str | None, max_bytes: int, max_pixels: int,
                     pixels_left: int | None):
    if root is None:
        raise bad_request(f"'{param}': local image paths are not enabled on this server (the operator can allow a "
                          "folder with --allow-local-images DIR); send a data URL", param, "local_images_disabled")
    path = url
    if url[:7].lower() == "file://":
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise bad_request(f"'{param}': file URLs must name a local file (file:///path), not host "
                              f"{parsed.netloc!r}", param, "invalid_image_url")
        path = unquote(parsed.path)
    refused = APIError(403, f"'{param}': {url!r} is outside the folder this server may read images from",
                       type=PERMISSION, param=param, code="image_path_not_allowed")
    if "\x00" in path:
        raise refused
    try:
        full = os.path.realpath(path) if os.path.isabs(path) else resolve_inside(root, path)
    except PathOutsideError:
        raise refused from None
    if not is_inside(full, [root]):
        raise refused
    if not os.path.isfile(full):
        raise bad_request(f"'{param}': no image file {url!r} in the allowed folder", param, "image_not_found")
    if os.path.getsize(full) > max_bytes:
        raise bad_request(f"'{param}': the image file is larger than this server's limit of {max_bytes} bytes",
                          param, "image_too_large")
    _check_budget(full, param, pixels_left)
    return _decoded(lambda: load_image(full, max_pixels), param)


def _check_budget(source, param: str, pixels_left: int | None) -> None:
    """Refuse, from the header alone, an image larger than what the request's pixel budget has left."""
    if pixels_left is None:
        return
    try:
        with Image.open(source) as img:
            w, h = img.size
    except Exception:  # not an image: load_image says what is wrong with it
        return
    if w * h > pixels_left:
        raise bad_request(f"'{param}': this {w}x{h} image would take the request's images past this server's "
                          f"limit of pixels per request ({pixels_left} left); send fewer or smaller images", param,
                          "too_many_pixels")


def _decoded(load, param: str):
    try:
        return load()
    except ImageLoadError as err:
        raise bad_request(f"'{param}': {err}", param, "invalid_image") from None
