"""Decode an image file the caller names into the uint8 RGB array the network expects.

``load_image(path, size=None)`` returns an H x W x 3 uint8 RGB array, whatever PIL opened:

- grayscale: 1-bit and 8-bit (``1``, ``L``) are repeated into three channels; 16-bit (``I;16``,
  and ``I`` as PIL reads 16-bit PNG/PGM) is scaled to 8 bits as round(v * 255 / 65535), not
  clipped (PIL's own ``convert("L")`` clips everything above 255 to white); float (``F``) is taken
  as 0..255 and clipped;
- transparency (``RGBA``, ``LA``, ``PA``, palette or RGB/L with a transparent colour) is composited
  on white. Keras' ``load_img`` simply drops alpha, which turns transparent pixels into whatever
  colour they happen to store (often black); white is what a viewer shows and what the photo
  datasets the network was trained on look like around a cut-out object;
- palette, CMYK, YCbCr: PIL's conversion to RGB; 16-bit RGB(A): PIL keeps the high byte of each
  sample (within one level of exact scaling);
- the EXIF orientation tag is applied, so a phone photo is the right way up;
- animated files: the first frame.

``size=(width, height)`` stretches the image to that size, as Keras'
``load_img(target_size=(height, width))`` does (note the order: PIL's, not Keras'). We resize
with PIL's bilinear filter, which PIL antialiases when shrinking; Keras defaults to nearest
neighbour, which aliases badly when a 4000-pixel photo becomes 224 pixels. Pass
``resample="nearest"`` to reproduce Keras' ``load_img`` bit for bit.

Every problem with the file is a one-line :class:`ConvscopeError` naming the file: missing, a
directory, empty, not an image, corrupt or truncated, larger than PIL's ``MAX_IMAGE_PIXELS``
(decompression-bomb guard; PIL's warning is treated as an error too), or smaller than 32x32 (VGG16
pools five times by two: anything smaller has no block5 output; ``min_side=1`` for callers that
resize for the network). A broken EXIF block is ignored, without PIL's warning.
"""

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import ConvscopeError
from engine.preprocess import _RESAMPLE

MIN_SIDE = 32

_SIXTEEN_BIT_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def load_image(path, size=None, resample: str = "bilinear", min_side: int = MIN_SIDE) -> np.ndarray:
    """Read the image at ``path`` as uint8 RGB (H, W, 3); optionally resize to (width, height).
    ``min_side``: the smallest side accepted (callers that resize for the network pass 1)."""
    path = os.fspath(path)
    _check_file(path)
    if resample not in _RESAMPLE:
        raise ValueError(f"unknown resample filter {resample!r}; use one of {', '.join(_RESAMPLE)}")
    with _decode(path) as im:
        rgb = _to_rgb(path, im)
    height, width = rgb.shape[:2]
    if width < min_side or height < min_side:
        raise ConvscopeError(
            f"{path}: image is {width}x{height}; the network needs at least "
            f"{min_side}x{min_side} (use a larger image)"
        )
    if size is not None:
        rgb = resize_image(rgb, size, resample)
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def resize_image(rgb: np.ndarray, size, resample: str = "bilinear") -> np.ndarray:
    """Stretch a uint8 RGB (H, W, 3) image to ``size`` = (width, height), as ``load_image`` does."""
    if resample not in _RESAMPLE:
        raise ValueError(f"unknown resample filter {resample!r}; use one of {', '.join(_RESAMPLE)}")
    width, height = (int(s) for s in size)
    if (height, width) == rgb.shape[:2]:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), _RESAMPLE[resample]))


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise ConvscopeError(f"{path}: no such file (check the path)")
    if os.path.isdir(path):
        raise ConvscopeError(f"{path}: is a directory, not an image file (name an image file)")
    if os.path.getsize(path) == 0:
        raise ConvscopeError(f"{path}: file is empty (give a JPEG, PNG or other image file)")


def _decode(path: str) -> Image.Image:
    """Open, bomb-check and fully decode an image; every failure becomes a ConvscopeError."""
    limit = Image.MAX_IMAGE_PIXELS
    im = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL's "Corrupt EXIF data" and the like
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            # Warning filters are process-wide state; check the size directly as well.
            if limit is not None and im.width * im.height > limit:
                raise Image.DecompressionBombError(f"{im.width}x{im.height}")
            im.load()
        return im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        message = (
            f"{path}: image has more than {limit:,} pixels, PIL's decompression-bomb limit "
            "(resize it first if it is a genuine image)"
        )
    except UnidentifiedImageError:
        kind = _signature(path)
        if kind:
            message = f"{path}: starts like a {kind} file but is corrupt or truncated; re-export or re-download it"
        else:
            message = f"{path}: not an image file PIL can read (use JPEG, PNG, BMP, TIFF, GIF or WebP)"
    except PermissionError:
        message = f"{path}: permission denied (check the file's permissions)"
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as exc:
        # PIL reports truncated or corrupt data with any of these.
        message = f"{path}: image is corrupt or truncated ({_one_line(exc)}); re-export or re-download it"
    if im is not None:
        im.close()
    raise ConvscopeError(message)


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _signature(path: str) -> str:
    """The image format a file's first bytes announce ('' when none), to tell corrupt from foreign."""
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError:
        return ""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _SIGNATURES if head.startswith(magic)), "")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _to_rgb(path: str, im: Image.Image) -> np.ndarray:
    try:
        with warnings.catch_warnings():  # PIL warns "Corrupt EXIF data" on stderr: the EXIF is ignored
            warnings.simplefilter("ignore")
            im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block must not make a readable photo unusable: ignore it
        pass
    try:
        if im.mode in _SIXTEEN_BIT_GRAY:
            gray = np.asarray(im).astype(np.float64)
            gray = np.rint(np.clip(gray, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        if im.mode == "F":
            gray = np.rint(np.clip(np.nan_to_num(np.asarray(im)), 0, 255)).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        if im.mode in _ALPHA_MODES or "transparency" in im.info:
            return _composite_on_white(np.asarray(im.convert("RGBA")))
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im)
    except ValueError as exc:  # PIL: "conversion from X to RGB not supported"
        raise ConvscopeError(
            f"{path}: cannot convert colour mode {im.mode} to RGB ({_one_line(exc)}); "
            "save it as an RGB image"
        ) from None


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[:, :, 3:4].astype(np.float32) / np.float32(255.0)
    rgb = rgba[:, :, :3].astype(np.float32) * alpha + np.float32(255.0) * (1 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
