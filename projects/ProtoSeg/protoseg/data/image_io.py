"""Reading images for the model: the one reader of training, evaluation, the demo and the web page.

:func:`read_image` returns what Detectron2's ``read_image`` returns for 8-bit files (bit for bit:
the same EXIF orientation, the same Pillow conversion to ``format``), and keeps the contrast of
images with more bits per channel, which Pillow's ``convert("RGB")`` clips to 255 (a 16-bit
picture would be read white):

- EXIF orientation: applied, as Detectron2 does (the image is read as it is displayed). The
  ``Orientation`` tag (0x0112) values 5..8 swap height and width; :func:`orientation_hint` explains
  a label map of the stored (unrotated) size.
- 16-bit integers (Pillow modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``; and ``I``, 32-bit, when
  every value lies in [0, 65535], as 16-bit PNG/TIFF files are opened by some Pillow versions):
  scaled by the range of the type, ``v >> 8`` (the high byte, floor(v / 256): 0 -> 0,
  65535 -> 255, within one level of v / 257), then grey -> RGB. The range of the type, not the
  image's own minimum and maximum: the mapping is fixed, so one stored value gives one 8-bit value
  in every image (a min-max stretch gives each image its own contrast, lifts the noise of dark
  frames and changes the pixels when one bright pixel is added), and it is what OpenCV's ``imread``
  (``IMREAD_COLOR`` / ``IMREAD_GRAYSCALE``) and Pillow's own decoding of 16-bit colour PNG/TIFF
  (mode ``RGB``) do: v >> 8, so 16-bit grey and 16-bit colour follow one rule.
- ``I`` with values outside [0, 65535] and floating-point images (mode ``F``) are refused: a float
  has no range of its type to scale by, and guessing one ([0, 1]? the image's min-max?) would
  silently change the picture. Convert such files to 8- or 16-bit integers first.

Every failure is an :class:`ImageReadError` naming the file.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager

__all__ = [
    "ImageReadError",
    "UnsupportedImageError",
    "ImageFileInfo",
    "read_image",
    "inspect_image",
    "read_orientation",
    "orientation_hint",
    "SIXTEEN_BIT_RULE",
]

#: how images of more than 8 bits per channel become 8-bit (the module docstring says why)
SIXTEEN_BIT_RULE = "v >> 8 (the 16-bit range onto 8 bits: 65535 -> 255)"

EXIF_ORIENTATION_TAG = 0x0112
#: EXIF Orientation value -> how the stored pixels are turned to be displayed
_ORIENTATIONS = {
    2: "mirrored left-right", 3: "rotated 180 degrees", 4: "mirrored top-bottom",
    5: "transposed", 6: "rotated 90 degrees clockwise", 7: "transversed", 8: "rotated 90 degrees counter-clockwise",
}
_SWAPS_SIZE = (5, 6, 7, 8)


class ImageReadError(OSError):
    """An image file that cannot be read (missing, truncated, not an image): "image FILE: REASON";
    ``reason`` alone for lists that name the file themselves."""

    reason = ""

    @classmethod
    def of(cls, file_name: str, reason: str) -> "ImageReadError":
        error = cls(f"image {file_name}: {reason}")
        error.reason = reason
        return error


class UnsupportedImageError(ImageReadError):
    """An image that decodes but has no defined 8-bit reading (floating point, out-of-range ints)."""


@dataclass(frozen=True)
class ImageFileInfo:
    """What :func:`read_image` did with a file: ``mode`` (Pillow's, as stored), ``bits`` per
    channel as stored (8, 16 or 32), the EXIF ``orientation`` (1: none) and ``read_hw``, the
    (H, W) of the image as read (after the orientation)."""

    mode: str
    bits: int
    orientation: int
    read_hw: Tuple[int, int]

    @property
    def conversion(self) -> Optional[str]:
        """One line on the bit-depth conversion, or None for 8-bit files."""
        if self.bits <= 8:
            return None
        stored = f"{self.bits}-bit (mode {self.mode}, values in the 16-bit range)" if self.mode == "I" else (
            f"{self.bits}-bit (mode {self.mode})")
        return f"{stored}: scaled to 8-bit by {SIXTEEN_BIT_RULE}"

    @property
    def rotation(self) -> Optional[str]:
        """One line on the EXIF orientation applied, or None when there is none."""
        if self.orientation == 1:
            return None
        return f"tagged EXIF Orientation {self.orientation}: read {_ORIENTATIONS[self.orientation]}, as displayed"


def read_image(file_name: str, format: Optional[str] = "BGR") -> np.ndarray:
    """(H, W, C) uint8 image in ``format`` (a Pillow mode, "BGR" or "YUV-BT.601", as Detectron2's
    ``read_image``), EXIF orientation applied, any bit depth scaled to 8 bits (module docstring).
    Raises :class:`ImageReadError` (:class:`UnsupportedImageError`) naming ``file_name``."""
    return _read(file_name, format)[0]


def inspect_image(file_name: str) -> ImageFileInfo:
    """Decode ``file_name`` as :func:`read_image` does (so a truncated or refused file raises the
    same :class:`ImageReadError`) and say what was done to it."""
    return _read(file_name, None)[1]


def _read(file_name: str, format: Optional[str]) -> Tuple[np.ndarray, ImageFileInfo]:
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            mode, bits, orientation = image.mode, _stored_bits(image), _orientation(image)
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            image = _to_8bit(image, file_name)
            info = ImageFileInfo(mode, bits, orientation, (image.height, image.width))
            return convert_PIL_to_numpy(image, format), info
    except ImageReadError:
        raise
    except FileNotFoundError as e:
        raise ImageReadError.of(file_name, "file does not exist") from e
    except UnidentifiedImageError as e:
        raise ImageReadError.of(file_name, "not an image: no format Pillow can decode") from e
    except Exception as e:  # OSError (truncated), SyntaxError, ValueError, DecompressionBombError, ...
        raise ImageReadError.of(file_name, f"cannot be decoded: {type(e).__name__}: {e}") from e


def _to_8bit(image: Image.Image, file_name: str) -> Image.Image:
    """An image of 8-bit channels: 8-bit modes as they are (Pillow converts them to ``format``),
    integer modes scaled by :data:`SIXTEEN_BIT_RULE` to "L", floating point refused."""
    if image.mode == "F":
        values = np.asarray(image)
        raise UnsupportedImageError.of(file_name, (
            f"floating-point pixels (Pillow mode F, values {values.min():g}..{values.max():g}) have no fixed "
            f"range to scale to 8 bits: save the image as 8- or 16-bit integers"
        ))
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UnsupportedImageError.of(file_name, (
                f"Pillow mode {image.mode} with values {values.min()}..{values.max()}, outside the 16-bit range "
                f"[0, 65535] that is scaled to 8 bits: save the image as 8- or 16-bit integers"
            ))
        return Image.fromarray((values.astype(np.int64) >> 8).astype(np.uint8), mode="L")
    return image


def _stored_bits(image: Image.Image) -> int:
    """Bits per channel as stored: 16 for ``I;16*`` and for 16-bit colour PNG/TIFF (Pillow decodes
    those to 8 bits itself; its raw mode says "RGB;16B"), 32 for ``I`` / ``F``, else 8."""
    if image.mode in ("I", "F"):
        return 32
    if image.mode.startswith("I;16"):
        return 16
    for tile in getattr(image, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else "")
        if isinstance(rawmode, str) and ";16" in rawmode:
            return 16
    return 8


def _orientation(image: Image.Image) -> int:
    """The EXIF Orientation tag, 1 when absent, unreadable or not a valid value (Detectron2 also
    ignores EXIF data that cannot be read)."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if value in _ORIENTATIONS else 1


def read_orientation(file_name: str) -> int:
    """The EXIF Orientation tag of ``file_name`` (1: none), from its header only; 1 if unreadable."""
    try:
        with PathManager.open(file_name, "rb") as f, Image.open(f) as image:
            return _orientation(image)
    except Exception:
        return 1


def orientation_hint(
    file_name: str, read_hw: Tuple[int, int], label_hw: Tuple[int, int], orientation: Optional[int] = None
) -> str:
    """For an image read as ``read_hw`` whose label map is ``label_hw``: when they differ only by
    the EXIF orientation (tag 5..8, and the label has the stored, unrotated size), a sentence
    saying so and how to fix the file; "" otherwise. ``orientation`` None: read from the file's
    header (only when the sizes are transposed)."""
    if tuple(label_hw) != tuple(read_hw)[::-1] or read_hw[0] == read_hw[1]:
        return ""
    if orientation is None:
        orientation = read_orientation(file_name)
    if orientation not in _SWAPS_SIZE:
        return ""
    h, w = read_hw
    return (
        f". The image's EXIF Orientation tag is {orientation} ({_ORIENTATIONS[orientation]} for display); it is "
        f"applied when the image is read (as Detectron2's read_image does), so the image stored as {h}x{w} "
        f"(WxH) is read as {w}x{h}, while the label map has the stored size. If the labels were drawn on the "
        f"stored pixels, remove the tag (exiftool -Orientation= -overwrite_original {file_name}); otherwise "
        f"rotate the label map the same way (or re-save both with the rotation applied, e.g. Pillow's "
        f"ImageOps.exif_transpose)."
    )
