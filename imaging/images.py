"""Decoding one image file into the uint8 array a model sees.

Every image, whatever its mode (L, RGB, RGBA, P, LA, CMYK, 16-bit I;16 / I),
becomes uint8 HWC with 1 or 3 channels: transparency is composited over black,
16-bit values are scaled to 0..255. Decoding is the same for real, synthetic
and corrupted images and for the served model, so none of them can differ by
format.
"""
from __future__ import annotations

import io
import re
import threading
import warnings

import numpy as np
from PIL import Image

# Images above this many pixels are refused before they are decoded, so a
# crafted file (a decompression bomb) cannot exhaust memory. 89.5 Mpx is PIL's
# own warning threshold; override per call.
DEFAULT_MAX_PIXELS = 89_478_485

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class BadImage(Exception):
    """A file that is not a readable image; the message says why."""


# Image.MAX_IMAGE_PIXELS is process-global; scans open images from several threads.
_PIL_LIMIT = threading.Lock()


# what a too-big message tells a user to do, by where the image came from
RAISE_LIMIT = ("--max-pixels limit", "raise --max-pixels if the file is genuine")


def _too_big(width: int, height: int, max_pixels: int, limit: tuple[str, str] = RAISE_LIMIT) -> BadImage:
    return BadImage(
        f"{width}x{height} = {width * height:,} pixels is over the {limit[0]} of {max_pixels:,} "
        f"(a possible decompression bomb); {limit[1]}"
    )


def _open_header(data: bytes) -> Image.Image:
    """Image.open (which reads only the header) without Pillow's own pixel limit getting in before ours."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        pass  # over twice Pillow's limit: read the header again without it, so our check names --max-pixels
    with _PIL_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, limit: tuple[str, str] = RAISE_LIMIT) -> Image.Image:
    """Open and fully decode image bytes, refusing truncated files and oversized images.

    `limit`: how a too-big message names the limit and what to do about it.
    """
    image = None
    try:
        with warnings.catch_warnings():
            # our --max-pixels check replaces Pillow's warning; its hard error still guards frames and tiles in load()
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open_header(data)
            width, height = image.size
            if width * height > max_pixels:
                raise _too_big(width, height, max_pixels, limit)
            image.load()  # raises on truncated data
    except BadImage:
        raise
    except Image.UnidentifiedImageError as error:  # its text quotes the BytesIO object, useless to a user
        raise BadImage("not an image (Pillow cannot identify the format)") from error
    except Image.DecompressionBombError as error:
        size = f"{image.size[0]}x{image.size[1]} " if image is not None else ""
        raise BadImage(f"{size}image has a frame or tile over Pillow's own pixel limit (a possible decompression bomb)") from error
    except Exception as error:
        text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the file", str(error))  # no object reprs in a user's message
        reason = "truncated" if "truncated" in text.lower() else "not an image"
        raise BadImage(f"{reason} ({error.__class__.__name__}: {text})") from error
    return image


def to_array(image: Image.Image, channels: int | None = None) -> np.ndarray:
    """uint8 HWC array with 1 or 3 channels (`channels=None` keeps grey as grey)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode == "P":
        image = image.convert("RGBA")
    elif mode in ("1", "LA", "PA"):
        image = image.convert("LA" if mode != "1" else "L")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        background = Image.new(image.mode[:-1] if image.mode in ("RGBA", "LA") else "RGB", image.size, 0)
        background.paste(image, mask=image.getchannel("A"))
        image = background
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    grey = image.mode == "L"
    if channels is None:
        channels = 1 if grey else 3
    if channels == 1 and not grey:
        image = image.convert("L")
    elif channels == 3 and grey:
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def decode(data: bytes, channels: int | None = None, size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
           limit: tuple[str, str] = RAISE_LIMIT) -> np.ndarray:
    """Bytes to uint8 HWC, optionally converted to `channels` and resized to size x size."""
    return conform(to_array(open_image(data, max_pixels, limit), channels), size)


def conform(array: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 HWC resized to size x size (bilinear) unless it already is."""
    if size is not None and (array.shape[0] != size or array.shape[1] != size):
        mode = "L" if array.shape[2] == 1 else "RGB"
        resized = Image.fromarray(array[:, :, 0] if mode == "L" else array, mode).resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(resized, dtype=np.uint8)
        array = array[:, :, None] if array.ndim == 2 else array
    return array


def encode_png(array: np.ndarray) -> bytes:
    """uint8 HWC (C=1 or 3) or HW to PNG bytes."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def encode_as(array: np.ndarray, image_format: str) -> bytes:
    """uint8 HWC (C=1 or 3) as a JPEG (quality 95) or PNG file's bytes: the format of the images it stands beside."""
    jpeg = str(image_format).upper() in ("JPEG", "JPG")
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array).save(buffer, format="JPEG" if jpeg else "PNG", **({"quality": 95} if jpeg else {}))
    return buffer.getvalue()


def write_as(root, relative: str, array: np.ndarray, image_format: str) -> str:
    """Write `array` to root/relative in `image_format` (see encode_as); the sha256 of the file's bytes."""
    import hashlib
    from pathlib import Path

    data = encode_as(array, image_format)
    path = Path(root) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def suffix_for(image_format: str) -> str:
    return ".jpg" if str(image_format).upper() in ("JPEG", "JPG") else ".png"

