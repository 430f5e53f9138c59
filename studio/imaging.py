"""Pure image functions: decode, orient, strip, resize, thumbnail, face boxes.

Nothing here touches the database or storage; every function takes bytes or
PIL images and returns bytes, images or plain data, so it is tested directly on
real photographs.
"""

from __future__ import annotations

import io
import math
import struct
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pillow_heif
from PIL import Image, ImageCms

from studio.errors import UserFacingError

# HEIC/HEIF decoding comes from pillow-heif; registering is idempotent.
pillow_heif.register_heif_opener()

MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_LONG_SIDE = 4096  # normalized image long side
THUMB_LONG_SIDE = 480
FACE_DETECT_LONG_SIDE = 1024  # faces are detected on a reduced copy
MAX_PIXELS = 50_000_000  # decompression-bomb guard, checked from the header
MAX_ASPECT_RATIO = 10.0  # longer than 10:1 is a strip or a banner, not a portrait
MIN_SHORT_SIDE = 64
ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP", "HEIF"}  # HEIC via pillow-heif

JPEG_QUALITY = 90
THUMB_QUALITY = 85

# What Pillow's decoders (and pillow-heif) raise on truncated or corrupt input.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    RuntimeError,
)

_PLEASE_UPLOAD = "Please upload a JPEG, PNG, WebP or HEIC photo."
_DAMAGED = "This photo is damaged or incomplete; please export it again."


class ImageRejected(UserFacingError, ValueError):
    """The file cannot be used; ``message`` is safe to show to the user."""


@dataclass(frozen=True)
class FaceBox:
    """A detected face, in pixels of the image it was reported for."""

    x: int
    y: int
    w: int
    h: int

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    @classmethod
    def from_list(cls, values) -> FaceBox:
        x, y, w, h = (int(v) for v in values)
        return cls(x, y, w, h)


@dataclass(frozen=True)
class IngestedImage:
    """An accepted upload, normalized and stripped of every byte of metadata."""

    jpeg: bytes  # RGB, long side <= max_long_side, no EXIF/ICC/XMP/comments
    thumbnail: bytes  # JPEG, long side <= thumb_long_side, no metadata
    width: int  # of the normalized image
    height: int
    faces: list[FaceBox]  # in normalized-image pixels, largest first
    source_format: str  # "JPEG" | "PNG" | "WEBP" | "HEIF"


# --------------------------------------------------------------------------
# Ingest
# --------------------------------------------------------------------------


def ingest(
    data: bytes,
    *,
    max_long_side: int = MAX_LONG_SIDE,
    thumb_long_side: int = THUMB_LONG_SIDE,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> IngestedImage:
    """Validate an upload and produce the normalized JPEG, thumbnail and faces.

    Decoding happens once, already reduced towards ``max_long_side``; the
    thumbnail and the face-detection copy are derived from that normalized
    image, never from the full-size original.
    """
    image, source_format = _load(data, max_long_side=max_long_side, max_bytes=max_bytes)
    return IngestedImage(
        jpeg=encode_jpeg(image),
        thumbnail=make_thumbnail(image, thumb_long_side),
        width=image.width,
        height=image.height,
        faces=detect_faces(image),
        source_format=source_format,
    )


def load_image(
    data: bytes, *, max_long_side: int | None = None, max_bytes: int = MAX_UPLOAD_BYTES
) -> Image.Image:
    """Decode, validate, EXIF-orient and convert to RGB (alpha on white).

    With ``max_long_side`` the result is reduced so its long side fits (never
    enlarged). The returned image carries no metadata in ``info``. Raises
    ``ImageRejected`` with a user-facing message for anything unusable.
    """
    return _load(data, max_long_side=max_long_side, max_bytes=max_bytes)[0]


def _load(
    data: bytes, *, max_long_side: int | None, max_bytes: int
) -> tuple[Image.Image, str]:
    if not data:
        raise ImageRejected("This file is empty. Please choose your photo again.")
    if len(data) > max_bytes:
        raise ImageRejected(
            f"This file is larger than {_human_size(max_bytes)}. "
            "Please upload a smaller photo or export it at a lower size."
        )

    # Decide the format from the bytes alone, and only let Pillow try that one
    # decoder: a mislabeled file never reaches a plugin we did not ask for.
    source_format = sniff_format(data)
    try:
        im = Image.open(io.BytesIO(data), formats=[source_format])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own (much higher) limit fired first; same answer as ours.
        raise ImageRejected(_too_many_pixels_message()) from None
    except _DECODE_ERRORS:
        raise ImageRejected(_DAMAGED) from None

    try:
        with im:
            # MPO is what Pillow calls a JPEG carrying extra (e.g. depth) frames.
            opened = "JPEG" if im.format == "MPO" else im.format
            if opened != source_format:
                raise ImageRejected(_DAMAGED)
            _check_dimensions(*im.size)  # header only: no pixels decoded yet
            image = _decode(im, max_long_side)
    except ImageRejected:
        raise
    except _DECODE_ERRORS:
        raise ImageRejected(_DAMAGED) from None
    return image, source_format


def _decode(im: Image.Image, max_long_side: int | None) -> Image.Image:
    """Decode pixels (JPEG at reduced scale when possible) and normalize."""
    orientation = _exif_orientation(im)
    icc_profile = im.info.get("icc_profile")

    if max_long_side and im.format in ("JPEG", "MPO"):
        # Draft works on the stored (unrotated) pixels, so the target is
        # computed from the stored size, not the displayed one (a rotated
        # photo's width and height swap). It picks a DCT scale (1/2, 1/4, 1/8)
        # that leaves both sides >= target; grayscale/CMYK keep their mode.
        target = _fit_long_side(im.size, max_long_side)
        if target != im.size:
            im.draft("RGB", target)

    im.load()  # a freshly opened animated WebP/APNG or MPO is at its first frame

    image = _to_rgb(im, icc_profile)
    if max_long_side:
        image = resize_long_side(image, max_long_side)
    # A long-side limit does not depend on rotation, so orient the smaller image.
    image = _apply_orientation(image, orientation)
    if image is im:
        image = image.copy()  # detach from the file object we are closing
    image.info = {}  # nothing of the source's metadata may travel onward
    return image


def _check_dimensions(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageRejected(_too_many_pixels_message(width, height))
    short, long = sorted((width, height))
    if short == 0 or long / short > MAX_ASPECT_RATIO:
        raise ImageRejected(
            f"This image is too long and narrow ({width}×{height} pixels). "
            "Please upload a normal photo, or crop it closer to your face."
        )
    if short < MIN_SHORT_SIDE:
        raise ImageRejected(
            f"This image is too small ({width}×{height} pixels). Please upload a photo "
            f"at least {MIN_SHORT_SIDE} pixels on each side; the original from your "
            "camera works best."
        )


def _too_many_pixels_message(width: int | None = None, height: int | None = None) -> str:
    size = f" ({width}×{height} pixels)" if width else ""
    return (
        f"This image is too large{size}. Please upload a photo under "
        f"{MAX_PIXELS // 1_000_000} megapixels."
    )


def _human_size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):g} MB"
    if n >= 1024:
        return f"{n / 1024:g} KB"
    return f"{n} bytes"


# --------------------------------------------------------------------------
# Format sniffing
# --------------------------------------------------------------------------

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}
_VIDEO_BRANDS = {b"qt  ", b"isom", b"iso2", b"mp41", b"mp42", b"M4V ", b"3gp4", b"3gp5"}


def sniff_format(data: bytes) -> str:
    """Return the accepted format name for ``data``, judged by magic bytes.

    Raises ``ImageRejected`` naming what the file actually is, so the user
    knows what to do (a filename or content type is never consulted).
    """
    head = bytes(data[:64])
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return _sniff_isobmff(data)
    _reject_known(head, data)
    raise ImageRejected(f"We couldn't recognize this file as a photo. {_PLEASE_UPLOAD}")


def _sniff_isobmff(data: bytes) -> str:
    """HEIC and AVIF share the ISO media container with MP4/MOV videos."""
    box_size = int.from_bytes(data[:4], "big")
    box = bytes(data[8 : max(16, min(box_size, 256))])
    brands = {box[i : i + 4] for i in range(0, len(box) - 3, 4)}  # major + compatible
    if brands & _HEIF_BRANDS or (b"mif1" in brands and not brands & _AVIF_BRANDS):
        return "HEIF"
    if brands & _AVIF_BRANDS:
        raise ImageRejected(
            f"This file is an AVIF image, which we can't read yet. {_PLEASE_UPLOAD}"
        )
    if brands & _VIDEO_BRANDS:
        raise ImageRejected(f"This file is a video. {_PLEASE_UPLOAD}")
    raise ImageRejected(f"We couldn't recognize this file as a photo. {_PLEASE_UPLOAD}")


def _reject_known(head: bytes, data: bytes) -> None:
    """Name common wrong uploads; returns only if the file is unknown."""
    kinds = [
        ((b"GIF87a", b"GIF89a"), "a GIF"),
        ((b"BM",), "a BMP image"),
        ((b"II*\x00", b"MM\x00*"), "a TIFF (or camera RAW) image"),
        ((b"%PDF",), "a PDF document"),
        ((b"PK\x03\x04", b"PK\x05\x06"), "a ZIP archive (or an Office document)"),
        ((b"8BPS",), "a Photoshop document"),
        ((b"\x00\x00\x01\x00",), "an icon file"),
        ((b"\xff\x0a", b"\x00\x00\x00\x0cJXL "), "a JPEG XL image"),
        ((b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!"), "a compressed archive"),
    ]
    for magics, kind in kinds:
        if head.startswith(magics):
            raise ImageRejected(f"This file is {kind}. {_PLEASE_UPLOAD}")

    text = _as_text(data)
    if text is not None:
        lowered = text.lstrip().lower()
        if "<svg" in lowered:
            kind = "an SVG drawing"
        elif lowered.startswith(("<!doctype html", "<html")) or "<body" in lowered:
            kind = "a web page (HTML)"
        else:
            kind = "a text file"
        raise ImageRejected(f"This file is {kind}, not a photo. {_PLEASE_UPLOAD}")


def _as_text(data: bytes) -> str | None:
    sample = bytes(data[:4096])
    if b"\x00" in sample:
        return None
    try:
        return sample.decode("utf-8-sig")
    except UnicodeDecodeError:
        # A cut-off multibyte character at the sample's end is still text.
        try:
            return sample[:-4].decode("utf-8-sig") if len(sample) > 4 else None
        except UnicodeDecodeError:
            return None


# --------------------------------------------------------------------------
# Orientation and color
# --------------------------------------------------------------------------

# EXIF orientation -> the transpose that makes the stored pixels upright.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _exif_orientation(im: Image.Image) -> int:
    # pillow-heif already applies HEIF rotation and reports orientation 1.
    try:
        value = im.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:
        return 1  # unreadable EXIF is not a reason to refuse the photo
    return value if value in _ORIENTATION_TRANSPOSE else 1


def _apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB of any decoded image, alpha flattened onto white (for prints and size-capped exports)."""
    return _to_rgb(im) if im.mode != "RGB" else im


def _to_rgb(im: Image.Image, icc_profile: bytes | None = None) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, alpha flattened onto white.

    When the source carries an ICC profile its colors are converted to sRGB,
    because the profile itself is stripped from the output.
    """
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        im = _high_bit_depth_to_l(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "PA":
        im = im.convert("RGBA")

    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        im = background

    if icc_profile and im.mode in ("RGB", "L", "CMYK"):
        converted = _icc_to_srgb(im, icc_profile)
        if converted is not None:
            return converted
    return im if im.mode == "RGB" else im.convert("RGB")


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    # Pillow's I;16 -> L conversion clips at 255 instead of scaling, which
    # turns a 16-bit grayscale photo almost white; scale explicitly.
    arr = np.asarray(im)
    if im.mode == "F":
        arr = np.clip(arr, 0, 255)
    else:  # I;16* and I (Pillow's 32-bit int mode, used for 16-bit data)
        arr = np.clip(arr.astype(np.float32) / 257.0, 0, 255)
    return Image.fromarray(np.rint(arr).astype(np.uint8), mode="L")


def _icc_to_srgb(im: Image.Image, icc_profile: bytes) -> Image.Image | None:
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if "srgb" in (source.profile.profile_description or "").lower():
            return None  # already sRGB: a plain conversion is exact enough
        return ImageCms.profileToProfile(im, source, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None  # a broken profile is not a reason to refuse the photo


# --------------------------------------------------------------------------
# Resizing and encoding
# --------------------------------------------------------------------------


def _fit_long_side(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    width, height = size
    if max(width, height) <= long_side:
        return size
    scale = long_side / max(width, height)
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def resize_long_side(image: Image.Image, long_side: int) -> Image.Image:
    """Shrink so the long side is ``long_side``; never upscales.

    A cheap integer ``reduce()`` first takes the image to within 2× of the
    target, then LANCZOS does the final, high-quality step. Returns ``image``
    itself when it already fits.
    """
    target = _fit_long_side(image.size, long_side)
    if target == image.size:
        return image
    factor = int(min(image.width / target[0], image.height / target[1]) // 2)
    if factor >= 2:
        image = image.reduce(factor)
    return image.resize(target, Image.Resampling.LANCZOS)


def _without_metadata(image: Image.Image, modes: tuple[str, ...]) -> Image.Image:
    """``image`` in an allowed mode with an empty ``info`` (copied if needed).

    Pillow's encoders pick up ICC profiles, EXIF and comments from
    ``image.info`` by default, so we never hand them an image that has any.
    The caller's image is not modified.
    """
    if image.mode not in modes:
        has_alpha = image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info
        image = image.convert("RGBA") if "RGBA" in modes and has_alpha else _to_rgb(image)
    elif image.info:
        image = image.copy()
    else:
        return image
    image.info = {}
    return image


def encode_jpeg(image: Image.Image, *, quality: int = JPEG_QUALITY, optimize: bool = True) -> bytes:
    """RGB JPEG with optimized Huffman tables (unless `optimize` is off) and no metadata at all.

    Baseline rather than progressive: on a 12 MP image progressive doubles the
    encode time for about 2% fewer bytes. Optimizing the tables is a second
    pass: for a small preview it doubles the encode time for under 2% fewer bytes.
    """
    image = _without_metadata(image, ("RGB",))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=optimize)
    return buf.getvalue()


def encode_png(image: Image.Image, *, compress_level: int = 6) -> bytes:
    """PNG with no metadata chunks (used for results that keep alpha)."""
    image = _without_metadata(image, ("RGB", "RGBA", "L", "LA"))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def make_thumbnail(image: Image.Image, long_side: int = THUMB_LONG_SIDE) -> bytes:
    """A small JPEG preview; pass the normalized image, not the original."""
    return encode_jpeg(resize_long_side(image, long_side), quality=THUMB_QUALITY)


def result_thumbnail(image: Image.Image, long_side: int = THUMB_LONG_SIDE) -> tuple[bytes, str]:
    """The preview of a result from the image `clean_output` decoded: (bytes, "png" or "jpg").

    A result with transparency (a cut-out, decoded as RGBA) gets a PNG so it
    keeps it; any other result gets a JPEG, a fraction of a PNG's encode cost.
    Made from the decoded result, so storing a result decodes it once.
    """
    target = _fit_long_side(image.size, long_side)
    if target != image.size:
        # An integer reduce to within 1x of the target, then LANCZOS: what decoding
        # a JPEG at a reduced DCT scale used to give these previews, at half the
        # cost of LANCZOS from the full size.
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=1.0)
    if image.mode == "RGBA":
        # Light compression: a thumbnail is small anyway, and zlib's default level
        # made this the costliest part of storing a PNG result (a profile of the step runner).
        return encode_png(image, compress_level=1), "png"
    return encode_jpeg(image, quality=THUMB_QUALITY, optimize=False), "jpg"


# --------------------------------------------------------------------------
# Faces
# --------------------------------------------------------------------------

# Tuned on real photographs (astronaut, two-face composite, coffee cup) at
# sizes from 160 to 4096 px, plain and JPEG-compressed: these values sit in
# the middle of the range that gives exactly 1 / 2 / 0 faces everywhere, and
# they reject the false positive on the astronaut's suit patch.
_FACE_SCALE_FACTOR = 1.15
_FACE_MIN_NEIGHBORS = 8
_FACE_MIN_FRACTION = 1 / 10  # of the detection copy's short side; selfies have big faces
# Small uploads are enlarged for detection: the cascade's 24 px window gives
# unstable results when faces are only a little bigger than it.
_FACE_DETECT_MIN_LONG_SIDE = 640

# OpenCV does not promise that one CascadeClassifier may run detectMultiScale
# from several threads at once (it keeps scratch buffers on the object), so
# calls on the shared instance are serialized.
_cascade_lock = threading.Lock()


@lru_cache(maxsize=1)
def _face_cascade():
    import cv2  # imported lazily: only face detection needs OpenCV

    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV face cascade missing at {path}")
    return cascade


def detect_faces(image: Image.Image) -> list[FaceBox]:
    """Frontal faces in ``image`` pixel coordinates, largest first.

    Detection runs on a grayscale copy reduced to FACE_DETECT_LONG_SIDE with an
    equalized histogram; the boxes are scaled back to ``image``.
    """
    gray = image if image.mode == "L" else _to_rgb(image).convert("L")
    small = _face_detection_copy(gray)
    sx = image.width / small.width
    sy = image.height / small.height
    boxes = []
    for box in detect_faces_in_gray(np.asarray(small, dtype=np.uint8)):
        left, top = math.floor(box.x * sx), math.floor(box.y * sy)
        right = min(image.width, math.ceil((box.x + box.w) * sx))
        bottom = min(image.height, math.ceil((box.y + box.h) * sy))
        boxes.append(FaceBox(int(left), int(top), int(right - left), int(bottom - top)))
    boxes.sort(key=lambda b: (-b.w * b.h, b.x, b.y))
    return boxes


def _face_detection_copy(gray: Image.Image) -> Image.Image:
    target = _fit_long_side(gray.size, FACE_DETECT_LONG_SIDE)
    if target != gray.size:
        # The cascade needs no print-grade resampling: an integer box reduce to
        # within 1.25x of the target before LANCZOS costs a quarter of a LANCZOS
        # from 12 MP and finds the same faces (the normalized image and the
        # thumbnail keep resize_long_side's gentler 2x gap).
        return gray.resize(target, Image.Resampling.LANCZOS, reducing_gap=1.25)
    if max(gray.size) < _FACE_DETECT_MIN_LONG_SIDE:
        scale = _FACE_DETECT_MIN_LONG_SIDE / max(gray.size)
        size = (round(gray.width * scale), round(gray.height * scale))
        return gray.resize(size, Image.Resampling.BICUBIC)
    return gray


def detect_faces_in_gray(pixels: np.ndarray) -> list[FaceBox]:
    """The face cascade on an 8-bit grayscale detection copy; boxes in its pixels.

    ``detect_faces`` makes that copy from a PIL image; the ingest benchmark
    feeds it a copy made by another library, so both sides run one detector.
    """
    import cv2  # imported lazily: only face detection needs OpenCV

    equalized = cv2.equalizeHist(np.ascontiguousarray(pixels, dtype=np.uint8))
    min_side = max(24, int(min(pixels.shape[:2]) * _FACE_MIN_FRACTION))
    cascade = _face_cascade()
    with _cascade_lock:
        found = cascade.detectMultiScale(
            equalized,
            scaleFactor=_FACE_SCALE_FACTOR,
            minNeighbors=_FACE_MIN_NEIGHBORS,
            minSize=(min_side, min_side),
        )
    boxes = [FaceBox(int(x), int(y), int(w), int(h)) for x, y, w, h in found]
    boxes.sort(key=lambda b: (-b.w * b.h, b.x, b.y))
    return boxes


# --------------------------------------------------------------------------
# Finished images (results): stored and served without metadata
# --------------------------------------------------------------------------

# What may remain in a stored file: image data and colour basics, nothing that
# describes the person, the device, the place or the time.
_PNG_CLEAN_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"bKGD"}
_JPEG_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}


def carries_metadata(data: bytes) -> bool:
    """True unless ``data`` is a JPEG or PNG with no metadata (EXIF, XMP, ICC, comments, text).

    Anything unusual (another format, bytes after the end of the image, a
    malformed header) counts as carrying metadata, so it gets re-encoded.
    """
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_carries_metadata(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_carries_metadata(data)
    return True


def _jpeg_carries_metadata(data: bytes) -> bool:
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return True  # trailing bytes after the image (e.g. a JPEG+ZIP polyglot)
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return True
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker == 0xDA:  # start of scan: the header is over
            return False
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        payload = data[i + 4 : i + 2 + length]
        if marker == 0xFE:  # comment
            return True
        if marker == 0xE0 and not (payload.startswith(b"JFIF\x00") and length == 16):
            return True  # JFXX, or JFIF with an embedded thumbnail
        if 0xE1 <= marker <= 0xEF and not (marker == 0xEE and payload.startswith(b"Adobe")):
            return True  # EXIF/XMP (APP1), ICC (APP2), IPTC (APP13), …
        i += 2 + length
    return True


def _png_carries_metadata(data: bytes) -> bool:
    i = 8
    while i + 8 <= len(data):
        length = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8]
        if kind not in _PNG_CLEAN_CHUNKS:
            return True  # tEXt, zTXt, iTXt (XMP), eXIf, iCCP, tIME, …
        i += 12 + length
        if kind == b"IEND":
            return i < len(data.rstrip(b"\x00"))
    return True


def clean_output(data: bytes, *, max_bytes: int = 4 * MAX_UPLOAD_BYTES) -> tuple[bytes, str, Image.Image]:
    """A finished image as it may be stored and served: (bytes, content type, decoded image).

    A JPEG or PNG without metadata is kept byte for byte (no second lossy
    encode). Anything else is decoded with the same guards as an upload,
    turned upright, converted to sRGB and re-encoded with no metadata: PNG
    when it has transparency (a removed background), JPEG otherwise. The
    decoded image (for thumbnails) carries no metadata either. Raises
    ImageRejected when the bytes are not a usable image. The image is RGBA
    when the result has transparency, RGB otherwise.
    """
    fmt = sniff_format(data)
    # A clean JPEG or PNG is kept as is, only decoded to check it (and for the thumbnail).
    kept = fmt in ("JPEG", "PNG") and not carries_metadata(data)
    if fmt != "JPEG" and _has_alpha(data, fmt):
        image = _load_rgba(data, fmt, max_bytes)
        return (data if kept else encode_png(image)), "image/png", image
    image = load_image(data, max_bytes=max_bytes)
    if kept:
        return data, "image/png" if fmt == "PNG" else "image/jpeg", image
    return encode_jpeg(image, quality=95), "image/jpeg", image


def _has_alpha(data: bytes, fmt: str) -> bool:
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, *_DECODE_ERRORS):
        return False  # load_image will refuse it with the right message


def _load_rgba(data: bytes, fmt: str, max_bytes: int) -> Image.Image:
    if len(data) > max_bytes:
        raise ImageRejected("This image is too large.")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            _check_dimensions(*im.size)
            orientation = _exif_orientation(im)
            image = _apply_orientation(im.convert("RGBA"), orientation)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, *_DECODE_ERRORS):
        raise ImageRejected(_DAMAGED) from None
    image.info = {}
    return image
