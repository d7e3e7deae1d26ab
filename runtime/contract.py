"""The input contract: what the graphs take, and the one implementation of preprocessing.

Training and the runtime both call :meth:`InputContract.prepare` and :meth:`InputContract.read_image`,
so an image scored on a device is converted exactly as it was during training.

Rules (documented in docs/bundle-format.md):

* arrays: ``uint8`` is divided by 255; ``float32``/``float64`` must already lie in the value range
  ``[0, 1]`` and be finite; ``bool`` maps to 0/1. Accepted layouts: ``(H, W)`` and ``(N, H, W)`` for one
  channel, ``(C, H, W)``/``(H, W, C)`` for one image, ``(N, C, H, W)`` and ``(N, H, W, C)``.
  Arrays must already have the contract's height and width.
* image files: decoded with Pillow (plain 8-bit PNGs of the contract's mode and size by
  :mod:`edgevae.runtime.png`, bit-identical and faster for small images), converted with
  ``Image.convert("L")`` (one channel) or ``Image.convert("RGB")`` (three channels; an alpha channel is
  dropped), then, when the size differs, resized to exactly ``width x height`` with the contract's filter
  (default bilinear; the aspect ratio is not kept and nothing is cropped), then divided by 255.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
from numpy.typing import NDArray

from .errors import ArrayInputError, ImageChannelError, ImageReadError, ImageSizeError
from .png import decode_png

RESIZE_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos", "box")
# Image files a folder walk takes (Pillow reads them all); a file named explicitly is read as an image whatever its
# extension, unless it is an array or IDX file.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm", ".pbm", ".pnm",
                    ".tga")
MAX_IMAGE_PIXELS = 64_000_000
# PNG files up to this size that already match the contract skip Pillow (runtime/png.py); larger ones
# gain nothing from it, since Pillow's per-file overhead no longer dominates.
_PLAIN_PNG_MAX_BYTES = 1 << 20


# The range every model's pixel values are mapped to (stored in the manifest for readers in other languages).
VALUE_RANGE = (0.0, 1.0)


def uint8_to_unit(images: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Map uint8 pixels 0..255 to float32 in [0, 1] (the single conversion used everywhere)."""
    out: NDArray[np.float32] = images.astype(np.float32)
    out /= np.float32(255.0)
    return out


@dataclass(frozen=True)
class InputContract:
    """Shape and conversion rules of the images a model takes; pixel values are always in [0, 1] (``VALUE_RANGE``).

    Args:
        channels: 1 (grayscale) or 3 (RGB).
        height: image height in pixels (>= 8).
        width: image width in pixels (>= 8).
        resize: Pillow filter used to resize image files of another size.
    """

    channels: int
    height: int
    width: int
    resize: str = "bilinear"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 8:
                raise ValueError(f"{name} must be an integer >= 8, got {value!r}")
        if self.resize not in RESIZE_FILTERS:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_FILTERS)}; got {self.resize!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.channels, self.height, self.width)

    @property
    def pil_mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["value_range"] = list(VALUE_RANGE)
        data["layout"] = "NCHW"
        data["dtype"] = "float32"
        data["file_conversion"] = f"Pillow Image.convert('{self.pil_mode}')"
        data["resize_rule"] = (
            f"resize to exactly {self.width}x{self.height} with Pillow's {self.resize} filter when the size "
            "differs (no crop, aspect ratio not kept)"
        )
        data["scaling"] = "uint8 / 255"
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InputContract":
        try:
            value_range = tuple(float(v) for v in data.get("value_range", VALUE_RANGE))
            if value_range != VALUE_RANGE:
                raise ValueError(f"value_range must be {list(VALUE_RANGE)}, got {list(value_range)}")
            return cls(
                channels=int(data["channels"]),
                height=int(data["height"]),
                width=int(data["width"]),
                resize=str(data.get("resize", "bilinear")),
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"input contract is incomplete or malformed ({exc!r}): {dict(data)!r}") from exc

    # ------------------------------------------------------------------ arrays
    def to_nchw(self, array: NDArray[Any]) -> NDArray[Any]:
        """Reorder an array in any accepted layout to (N, C, H, W) without changing its dtype."""
        c, h, w = self.shape
        if isinstance(array, (str, os.PathLike)) or (isinstance(array, (list, tuple)) and array
                                                      and isinstance(array[0], (str, os.PathLike))):
            raise ArrayInputError("this takes image arrays, not file paths; read files with "
                                  "edgevae.runtime.iter_batches(paths, model.contract) (as `edgevae score` does) or "
                                  "model.contract.read_image(path)")
        a = np.asarray(array)
        if a.ndim == 2:
            if c != 1:
                raise ArrayInputError(f"a 2-D array is one grayscale image, but the model takes {c} channels")
            a = a[None, None]
        elif a.ndim == 3:
            if c == 1:
                a = a[:, None]
            elif a.shape[0] == c:
                a = a[None]
            elif a.shape[-1] == c:
                a = np.moveaxis(a, -1, 0)[None]
            else:
                raise ArrayInputError(
                    f"a 3-D array must be (C, H, W) or (H, W, C) with C={c}, got shape {a.shape}"
                )
        elif a.ndim == 4:
            if a.shape[1] == c:
                pass
            elif a.shape[3] == c:
                a = np.moveaxis(a, 3, 1)
            else:
                raise ArrayInputError(
                    f"a 4-D array must be (N, {c}, H, W) or (N, H, W, {c}), got shape {a.shape}"
                )
        else:
            raise ArrayInputError(f"arrays must have rank 2, 3 or 4; got rank {a.ndim} (shape {a.shape})")
        if a.shape[2:] != (h, w):
            raise ArrayInputError(
                f"images must be {h}x{w} (height x width) as the model's input contract says, got "
                f"{a.shape[2]}x{a.shape[3]}; resize them first, or pass image files, which are resized"
            )
        return a

    def prepare(self, array: NDArray[Any]) -> NDArray[np.float32]:
        """Validate and convert an array of images to float32 (N, C, H, W) in [0, 1].

        Raises:
            ArrayInputError: wrong dtype, rank, shape, or non-finite / out-of-range values.
        """
        if (type(array) is np.ndarray and array.dtype == np.float32 and array.ndim == 4  # the common case, at once
                and array.shape[1:] == self.shape and array.flags.c_contiguous):
            a: NDArray[Any] = array
        else:
            a = self.to_nchw(array)
        if a.dtype == np.uint8:
            return np.ascontiguousarray(uint8_to_unit(a))
        if a.dtype == np.bool_:
            return np.ascontiguousarray(a, dtype=np.float32)
        if a.dtype not in (np.float32, np.float64, np.float16):
            raise ArrayInputError(
                f"arrays must be uint8 (0..255) or float in [0, 1]; got dtype {a.dtype}. "
                "Convert with .astype(np.uint8) or scale to [0, 1] floats"
            )
        out = np.ascontiguousarray(a, dtype=np.float32)
        if out.size:
            lo, hi = float(out.min()), float(out.max())  # NaN propagates into both and fails the test below
            if not (lo >= -1e-6 and hi <= 1.0 + 1e-6):
                finite = np.isfinite(out).reshape(out.shape[0], -1).all(axis=1)
                if not finite.all():
                    raise ArrayInputError(f"{int(np.count_nonzero(~finite))} image(s) contain NaN or Inf; "
                                          "every pixel must be finite")
                raise ArrayInputError(
                    f"float pixels must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                    "divide 0..255 data by 255 or pass it as uint8"
                )
        return out

    # ------------------------------------------------------------------ files
    def read_image(self, path: str | os.PathLike[str], *, strict_size: bool = False, strict_channels: bool = False,
                   notes: list[str] | None = None) -> NDArray[np.uint8]:
        """Decode one image file into uint8 (C, H, W) following the contract's conversion rules.

        Args:
            path: the image file.
            strict_size: refuse images whose size differs from the contract instead of resizing them.
            strict_channels: refuse images of another channel count instead of converting them.
            notes: when given, a conversion of the channel count is appended to it as a sentence.

        Raises:
            ImageReadError: the file cannot be read or decoded as an image, or has more than
                ``MAX_IMAGE_PIXELS`` pixels (a decompression bomb).
            ImageSizeError: ``strict_size`` and the image has another size.
            ImageChannelError: ``strict_channels`` and the image has another channel count.
        """
        name = os.fspath(path)
        source = self._plain_png(name)
        if isinstance(source, np.ndarray):
            return source
        return self._decode(source, name, strict_size, strict_channels, notes)

    def read_native(self, path: str | os.PathLike[str], downscale: int = 1,
                    notes: list[str] | None = None) -> NDArray[np.uint8]:
        """Decode one image file into uint8 (C, H, W) at its own size (shrunk by the whole factor ``downscale``
        with the contract's filter), converted to the contract's channels: what a tiled bundle scores.

        Raises:
            ImageReadError: as :meth:`read_image`.
            ValueError: ``downscale`` is not a whole number >= 1.
        """
        if not (isinstance(downscale, int) and downscale >= 1):
            raise ValueError(f"downscale must be a whole number >= 1, got {downscale!r}")
        return self._decode(os.fspath(path), os.fspath(path), False, False, notes, downscale=downscale)

    def decode_native(self, data: bytes, name: str = "<bytes>", downscale: int = 1) -> NDArray[np.uint8]:
        """:meth:`read_native` for an encoded image held in memory."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageReadError(f"{name}: expected the bytes of an encoded image, got {type(data).__name__}")
        if not (isinstance(downscale, int) and downscale >= 1):
            raise ValueError(f"downscale must be a whole number >= 1, got {downscale!r}")
        return self._decode(io.BytesIO(bytes(data)), name, False, False, None, downscale=downscale)

    def decode_image(self, data: bytes, name: str = "<bytes>", *, strict_size: bool = False,
                     strict_channels: bool = False, notes: list[str] | None = None) -> NDArray[np.uint8]:
        """Decode an encoded image held in memory (PNG, JPEG, ... file contents) like :meth:`read_image`.

        ``name`` is what error messages call the image (a path or a row id). Raises what ``read_image`` raises.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageReadError(f"{name}: expected the bytes of an encoded image, got {type(data).__name__}")
        raw = bytes(data)
        fast = decode_png(raw, self.channels, (self.height, self.width)) if raw[:8] == _PNG_SIGNATURE else None
        if fast is not None:
            return fast
        return self._decode(io.BytesIO(raw), name, strict_size, strict_channels, notes)

    def _decode(self, source: Any, name: str, strict_size: bool, strict_channels: bool,
                notes: list[str] | None, downscale: int | None = None) -> NDArray[np.uint8]:
        """Pillow's decode of a file name or file object into uint8 (C, H, W), with the contract's rules; with
        ``downscale``, at the file's own size divided by it instead of the contract's size."""
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError as exc:  # pragma: no cover - Pillow is a base dependency
            raise ImageReadError("reading image files needs Pillow: pip install pillow") from exc
        try:
            with Image.open(source) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise ImageReadError(f"{name}: refused, {img.width}x{img.height} is more than "
                                         f"{MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?)")
                if strict_size and img.size != (self.width, self.height):
                    raise ImageSizeError(f"{name}: image is {img.width}x{img.height} (width x height), the model "
                                         f"takes {self.width}x{self.height}; drop --strict to resize it")
                self._check_channels(name, mode_channels(img.mode), strict_channels, notes)
                img.load()
                img = _to_mode(img, self.pil_mode)
                size = (self.width, self.height) if downscale is None else (
                    max(1, img.width // downscale), max(1, img.height // downscale))
                if img.size != size:
                    resample = getattr(Image.Resampling, self.resize.upper())
                    img = img.resize(size, resample=resample)
                arr = np.asarray(img, dtype=np.uint8)
        except (ImageReadError, ImageSizeError, ImageChannelError):
            raise
        except UnidentifiedImageError as exc:
            raise ImageReadError(f"{name}: not a readable image (Pillow cannot identify it)") from exc
        except Image.DecompressionBombError as exc:
            raise ImageReadError(f"{name}: refused as a decompression bomb ({exc})") from exc
        except FileNotFoundError as exc:
            raise ImageReadError(f"{name}: no such file") from exc
        except IsADirectoryError as exc:
            raise ImageReadError(f"{name}: is a directory, not an image file") from exc
        except PermissionError as exc:
            raise ImageReadError(f"{name}: permission denied") from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageReadError(f"{name}: corrupt or truncated image ({exc})") from exc
        if arr.ndim == 2:
            arr = arr[None]
        else:
            arr = np.moveaxis(arr, -1, 0)
        return np.ascontiguousarray(arr)

    def _plain_png(self, name: str) -> Any:
        """A small plain PNG of the contract's mode and size, decoded (uint8 (C, H, W)); otherwise what Pillow
        should open: the file's bytes already read (a BytesIO), or its name."""
        if name[-4:].lower() != ".png":
            return name
        data = _read_small_file(name)
        if data is None:
            return name
        fast = decode_png(data, self.channels, (self.height, self.width))  # read once: this reader, else Pillow
        return fast if fast is not None else io.BytesIO(data)

    def _check_channels(self, name: str, channels: int, strict: bool, notes: list[str] | None) -> None:
        if channels == self.channels:
            return
        what = (f"{_KIND[channels]} image ({channels} channel{'s' if channels > 1 else ''}) for a model that takes "
                f"{self.channels} ({_KIND[self.channels]})")
        if strict:
            raise ImageChannelError(f"{name}: {what}; drop --strict to convert it with Image.convert('{self.pil_mode}')")
        if notes is not None:
            notes.append(f"{what}: converted with Image.convert('{self.pil_mode}')")



def mode_channels(mode: str) -> int:
    """Colour channels of a Pillow image mode, alpha aside: 1 for grayscale and bilevel modes, else 3."""
    return 1 if mode in _GRAY_MODES else 3


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
_KIND = {1: "grayscale", 3: "colour"}


def _read_small_file(name: str) -> bytes | None:
    """The bytes of a file of at most ``_PLAIN_PNG_MAX_BYTES``; None if larger or unreadable (Pillow's path
    then opens it and words the error)."""
    try:
        with open(name, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > _PLAIN_PNG_MAX_BYTES:
                return None
            return handle.read()
    except OSError:
        return None


def _to_mode(img: Any, mode: str) -> Any:
    """Convert a Pillow image to L or RGB; 16/32-bit integer images are rescaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        from PIL import Image

        img = Image.fromarray(np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert(mode)
