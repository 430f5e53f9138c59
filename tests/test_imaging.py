"""studio.imaging on real photographs: formats, orientation, metadata, sizes, faces.

Pure functions, no Django: run with ``-p no:django`` if settings are not importable.
"""

from __future__ import annotations

import io
import random
import struct
import warnings
import zipfile
import zlib

import cv2
import numpy as np
import pillow_heif
import pytest
from PIL import ExifTags, Image, ImageCms, ImageDraw, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin

from studio import imaging
from studio.imaging import (
    FaceBox,
    ImageRejected,
    IngestedImage,
    detect_faces,
    encode_jpeg,
    encode_png,
    ingest,
    load_image,
    make_thumbnail,
    resize_long_side,
)
from tests.images import astronaut, no_face, to_bytes, two_faces

# Pure computation: ./scripts/test-scaled leaves these to the embedded run (tests/conftest.py).
pytestmark = pytest.mark.backend_free

pillow_heif.register_heif_opener()

PLEASE = "Please upload a JPEG, PNG, WebP or HEIC photo."
DAMAGED = "This photo is damaged or incomplete; please export it again."


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def correlation(a: Image.Image, b: Image.Image) -> float:
    """Pixel correlation of two same-size images, on luminance."""
    assert a.size == b.size, (a.size, b.size)
    x = np.asarray(a.convert("L"), dtype=np.float64).ravel()
    y = np.asarray(b.convert("L"), dtype=np.float64).ravel()
    return float(np.corrcoef(x, y)[0, 1])


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    x = np.asarray(a.convert("RGB"), dtype=np.int16)
    y = np.asarray(b.convert("RGB"), dtype=np.int16)
    return float(np.abs(x - y).mean())


def heic_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    # x265's default preset takes ~1 s for 512 px; ultrafast keeps tests quick.
    img.save(buf, format="HEIF", quality=90, enc_params={"preset": "ultrafast"}, **kw)
    return buf.getvalue()


def png_with_ihdr_size(width: int, height: int) -> bytes:
    """A real, tiny PNG whose IHDR claims width×height (CRC fixed up)."""
    data = bytearray(to_bytes(Image.new("1", (64, 64)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def marked_portrait(size=(512, 384)) -> Image.Image:
    """A non-square crop of the astronaut with a red square in its top-left corner."""
    img = astronaut().resize((512, 512)).crop((0, 0, *size)).copy()
    ImageDraw.Draw(img).rectangle((8, 8, 8 + size[0] // 8, 8 + size[1] // 8), fill=(255, 0, 0))
    return img


def is_red(pixel) -> bool:
    r, g, b = pixel[:3]
    return r > 180 and g < 90 and b < 90


def jpeg_with_orientation(img: Image.Image, orientation: int, **save_kw) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return to_bytes(img, "JPEG", quality=95, exif=exif, **save_kw)


# The stored pixels for each EXIF orientation, given the upright picture.
STORE_FOR_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def stored_for(upright: Image.Image, orientation: int) -> Image.Image:
    method = STORE_FOR_ORIENTATION[orientation]
    stored = upright.transpose(method) if method is not None else upright.copy()
    return stored


# --------------------------------------------------------------------------
# accepted formats
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, encode",
    [
        ("JPEG", lambda im: to_bytes(im, "JPEG", quality=92)),
        ("PNG", lambda im: to_bytes(im, "PNG")),
        ("WEBP", lambda im: to_bytes(im, "WEBP", quality=90)),
        ("HEIF", heic_bytes),
    ],
)
def test_accepted_formats_are_ingested(fmt, encode):
    original = astronaut()
    result = ingest(encode(original))

    assert isinstance(result, IngestedImage)
    assert result.source_format == fmt
    assert (result.width, result.height) == (512, 512)
    out = decode(result.jpeg)
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == (512, 512)
    assert correlation(out, original) > 0.98
    assert mean_abs_diff(out, original) < 8
    assert len(result.faces) == 1


def test_multi_picture_jpeg_from_a_phone_is_a_jpeg():
    # Phones write MPO (JPEG + extra frames); Pillow reports it as "MPO".
    first = astronaut(4)
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[ImageOps.invert(first)], quality=90)
    assert decode(buf.getvalue()).format == "MPO"

    result = ingest(buf.getvalue(), max_long_side=512)

    assert result.source_format == "JPEG"
    assert correlation(decode(result.jpeg), astronaut()) > 0.98


def test_format_is_decided_by_content_not_by_what_pillow_would_guess():
    # A PNG signature followed by JPEG data is not a PNG, and must not be
    # rescued by trying other decoders.
    jpeg = to_bytes(astronaut())
    with pytest.raises(ImageRejected) as exc:
        ingest(b"\x89PNG\r\n\x1a\n" + jpeg[8:])
    assert exc.value.message == DAMAGED


def test_sniff_format_names_the_container():
    assert imaging.sniff_format(to_bytes(astronaut(), "JPEG")) == "JPEG"
    assert imaging.sniff_format(to_bytes(astronaut(), "PNG")) == "PNG"
    assert imaging.sniff_format(to_bytes(astronaut(), "WEBP")) == "WEBP"
    assert imaging.sniff_format(heic_bytes(astronaut().resize((128, 128)))) == "HEIF"


# --------------------------------------------------------------------------
# orientation
# --------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(orientation):
    upright = marked_portrait()
    stored = stored_for(upright, orientation)
    data = jpeg_with_orientation(stored, orientation)
    # The fixture itself agrees with Pillow's reference implementation.
    assert correlation(ImageOps.exif_transpose(decode(data)), upright) > 0.97

    result = ingest(data)
    out = decode(result.jpeg)

    assert out.size == upright.size == (result.width, result.height)
    assert correlation(out, upright) > 0.97
    # The marker is in the top-left corner and nowhere else.
    w, h = out.size
    assert is_red(out.getpixel((20, 20)))
    for corner in [(w - 20, 20), (20, h - 20), (w - 20, h - 20)]:
        assert not is_red(out.getpixel(corner))
    # No orientation tag survives to rotate it a second time.
    assert ExifTags.Base.Orientation not in out.getexif()


@pytest.mark.parametrize("orientation", [5, 6, 8])
def test_orientation_is_respected_when_draft_decoding_a_large_jpeg(orientation, monkeypatch):
    upright = marked_portrait().resize((2048, 1536), Image.Resampling.BILINEAR)
    data = jpeg_with_orientation(stored_for(upright, orientation), orientation)

    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        before = self.size
        result = real_draft(self, mode, size)
        drafts.append((before, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = load_image(data, max_long_side=512)

    # Decoded at 1/4 scale (2048 -> 512), in the stored orientation.
    assert drafts == [((1536, 2048), (384, 512))]
    assert out.size == (512, 384)
    assert correlation(out, upright.resize((512, 384))) > 0.97
    assert is_red(out.getpixel((15, 15)))


def test_heic_rotation_comes_out_upright():
    upright = marked_portrait()
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = heic_bytes(stored_for(upright, 6), exif=exif.tobytes())

    out = load_image(data)

    assert out.size == upright.size
    assert correlation(out, upright) > 0.97
    assert is_red(out.getpixel((20, 20)))


# --------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------

MARKERS = [b"SECRET-EXIF", b"SECRET-COMMENT", b"SECRET-XMP", b"SECRET-PNG-TEXT"]
METADATA_SIGNATURES = [b"Exif\x00\x00", b"ICC_PROFILE", b"http://ns.adobe.com/xap", b"acsp"]


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_with_gps() -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.ImageDescription] = "SECRET-EXIF description"
    exif[ExifTags.Base.Make] = "SECRET-EXIF camera"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.update({1: "N", 2: (52.0, 22.0, 7.5), 3: "E", 4: (4.0, 53.0, 1.0)})
    return exif


def assert_no_metadata(data: bytes) -> None:
    for needle in MARKERS + METADATA_SIGNATURES:
        assert needle not in data, needle
    im = decode(data)
    assert im.getexif() == {}
    for key in ("exif", "icc_profile", "comment", "xmp", "XML:com.adobe.xmp", "dpi"):
        assert key not in im.info, key
    if im.format == "JPEG":
        assert [name for name, _ in im.applist] == ["APP0"]  # JFIF header only
    if im.format == "PNG":
        assert not im.text


def test_metadata_is_stripped_from_jpeg_upload():
    data = to_bytes(
        astronaut(),
        "JPEG",
        quality=92,
        exif=exif_with_gps(),
        icc_profile=srgb_icc(),
        comment=b"SECRET-COMMENT",
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/">SECRET-XMP</x:xmpmeta>',
        dpi=(300, 300),
    )
    # The input really carries all of it.
    source = decode(data)
    assert source.getexif().get_ifd(ExifTags.IFD.GPSInfo)[2] == (52.0, 22.0, 7.5)
    assert {"exif", "icc_profile", "comment", "xmp"} <= set(source.info)
    for needle in MARKERS[:3]:
        assert needle in data

    result = ingest(data)

    assert_no_metadata(result.jpeg)
    assert_no_metadata(result.thumbnail)
    assert correlation(decode(result.jpeg), astronaut()) > 0.98
    # Images handed to other code carry nothing either.
    assert load_image(data).info == {}
    assert load_image(data, max_long_side=100).info == {}


def test_metadata_is_stripped_from_png_upload():
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "SECRET-PNG-TEXT")
    info.add_itxt("XML:com.adobe.xmp", "SECRET-XMP", zip=False)
    data = to_bytes(astronaut(), "PNG", pnginfo=info, exif=exif_with_gps(), icc_profile=srgb_icc())
    assert b"SECRET-PNG-TEXT" in data and b"SECRET-XMP" in data

    result = ingest(data)

    assert_no_metadata(result.jpeg)
    assert_no_metadata(result.thumbnail)


def test_encoders_ignore_metadata_in_image_info():
    img = astronaut().convert("RGBA")
    img.info.update(
        exif=exif_with_gps().tobytes(),
        icc_profile=srgb_icc(),
        comment=b"SECRET-COMMENT",
        dpi=(300, 300),
    )

    png = encode_png(img)
    jpeg = encode_jpeg(img)

    assert_no_metadata(png)
    assert_no_metadata(jpeg)
    assert decode(png).mode == "RGBA"  # alpha kept for results that need it
    assert decode(jpeg).mode == "RGB"
    assert "comment" in img.info  # the caller's image is not modified


def swapped_primaries_icc() -> bytes:
    """A minimal ICC v2 RGB profile whose red and green primaries are swapped."""

    def s15(v):
        return struct.pack(">i", round(v * 65536))

    def xyz(x, y, z):
        return b"XYZ " + bytes(4) + s15(x) + s15(y) + s15(z)

    def curve(gamma):
        return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)

    name = b"Swapped RG test profile\x00"
    tags = [
        (b"desc", b"desc" + bytes(4) + struct.pack(">I", len(name)) + name + bytes(78)),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.3851, 0.7169, 0.0971)),  # sRGB's green primary
        (b"gXYZ", xyz(0.4361, 0.2225, 0.0139)),  # sRGB's red primary
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curve(2.2)),
        (b"gTRC", curve(2.2)),
        (b"bTRC", curve(2.2)),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table = body = b""
    for sig, data in tags:
        data += bytes(-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (
        struct.pack(">I4sI", offset + len(body), bytes(4), 0x02100000)
        + b"mntrRGB XYZ "
        + bytes(12)  # date
        + b"acsp"
        + bytes(28)  # platform, flags, device, attributes, intent
        + s15(0.9642) + s15(1.0) + s15(0.8249)  # D50 illuminant
        + bytes(48)  # creator, id, reserved
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def test_colors_are_converted_to_srgb_before_the_profile_is_dropped():
    # Pixels that mean "green" under their embedded profile must look green
    # once the profile is stripped; a plain strip would leave them red.
    img = Image.new("RGB", (128, 128), (220, 30, 30))
    for fmt in ("PNG", "JPEG"):
        out = load_image(to_bytes(img, fmt, icc_profile=swapped_primaries_icc()))
        r, g, b = out.getpixel((64, 64))
        assert g > 180 and r < 80 and b < 80, (fmt, (r, g, b))


def test_broken_icc_profile_does_not_reject_the_photo():
    data = to_bytes(astronaut(), "JPEG", icc_profile=b"not really a profile" * 10)
    out = decode(ingest(data).jpeg)
    assert correlation(out, astronaut()) > 0.98


# --------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------


def test_large_photo_is_normalized_to_max_long_side():
    # A 24 MP camera frame: the portrait, undistorted, on a plain backdrop.
    big = Image.new("RGB", (6000, 4000), (190, 170, 150))
    big.paste(astronaut().resize((4000, 4000), Image.Resampling.BILINEAR), (1000, 0))
    result = ingest(to_bytes(big, "JPEG", quality=85))

    assert (result.width, result.height) == (4096, 2731)
    assert decode(result.jpeg).size == (4096, 2731)
    assert decode(result.thumbnail).size == (480, 320)
    assert len(result.faces) == 1
    # Her face is at 175..275 of 512 px, i.e. x 1000 + 8 * that, scaled by 4096/6000.
    cx, cy = result.faces[0].center
    assert abs(cx - (1000 + 8 * 225) * 4096 / 6000) < 60
    assert abs(cy - 8 * 115 * 4096 / 6000) < 60


def test_small_photo_is_never_upscaled():
    img = astronaut().resize((300, 200))
    result = ingest(to_bytes(img, "PNG"))
    assert (result.width, result.height) == (300, 200)
    assert decode(result.jpeg).size == (300, 200)
    assert decode(result.thumbnail).size == (300, 200)


@pytest.mark.parametrize(
    "image, thumb_long_side, expected",
    [
        (astronaut(), 480, (480, 480)),
        (two_faces(), 480, (480, 240)),
        (no_face(), 480, (480, 320)),
        (no_face(), 150, (150, 100)),
    ],
)
def test_thumbnail_size(image, thumb_long_side, expected):
    result = ingest(to_bytes(image), thumb_long_side=thumb_long_side)
    thumb = decode(result.thumbnail)
    assert thumb.format == "JPEG" and thumb.mode == "RGB"
    assert thumb.size == expected
    assert correlation(thumb, image.resize(expected, Image.Resampling.LANCZOS)) > 0.97


def test_resize_long_side():
    img = two_faces()  # 1024x512
    assert resize_long_side(img, 2048) is img  # never upscales
    small = resize_long_side(img, 100)  # reduce() then LANCZOS
    assert small.size == (100, 50)
    assert correlation(small, img.resize((100, 50), Image.Resampling.LANCZOS)) > 0.99
    assert resize_long_side(img.rotate(90, expand=True), 300).size == (150, 300)


def test_big_reductions_use_integer_reduce_before_lanczos(monkeypatch):
    factors = []
    real_reduce = Image.Image.reduce

    def spy(self, factor, box=None):
        factors.append(factor)
        return real_reduce(self, factor, box)

    monkeypatch.setattr(Image.Image, "reduce", spy)
    img = astronaut(4)  # 2048 px
    assert resize_long_side(img, 256).size == (256, 256)
    assert factors == [4]  # 2048 -> 512 cheaply, then LANCZOS to 256


def test_make_thumbnail_respects_long_side():
    thumb = decode(make_thumbnail(astronaut(2), long_side=200))
    assert thumb.size == (200, 200)


def test_result_thumbnail_from_the_decoded_result_matches_a_full_lanczos_thumbnail():
    result = imaging.encode_jpeg(astronaut(2).resize((768, 1024)), quality=92)  # a headshot-sized result
    _, _, decoded = imaging.clean_output(result)
    data, ext = imaging.result_thumbnail(decoded)
    thumb = decode(data)
    full = decode(make_thumbnail(load_image(result)))
    assert ext == "jpg" and thumb.format == "JPEG"
    assert thumb.size == full.size == (360, 480)
    assert correlation(thumb, full) > 0.99
    assert not imaging.carries_metadata(data)


def test_a_clean_png_result_is_kept_byte_for_byte_and_decoded_once_with_its_transparency(monkeypatch):
    cutout = astronaut(2).convert("RGBA")
    alpha = Image.new("L", cutout.size, 0)
    alpha.paste(255, (200, 100, 800, 1024))
    cutout.putalpha(alpha)
    clean_rgba = imaging.encode_png(cutout)
    clean_rgb = imaging.encode_png(astronaut(2))
    decodes = []
    real_load = ImageFile.ImageFile.load

    def counting_load(self):
        if self.tile:  # pixels still to decode (a loaded image has none left)
            decodes.append(self.format)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    data, content_type, image = imaging.clean_output(clean_rgba)
    thumb, ext = imaging.result_thumbnail(image)
    assert data == clean_rgba and content_type == "image/png" and image.mode == "RGBA"
    assert decodes == ["PNG"]  # the stored bytes were decoded once, for the check and the thumbnail
    with Image.open(io.BytesIO(thumb)) as im:
        assert ext == "png" and im.format == "PNG" and im.size == (480, 480)
        assert im.mode == "RGBA" and im.getchannel("A").getextrema() == (0, 255)
        assert im.getpixel((10, 10))[3] == 0 and im.getpixel((240, 240))[3] == 255
    assert not imaging.carries_metadata(thumb)

    # An opaque PNG is kept as is too; its preview is a JPEG (no transparency to keep).
    data, content_type, image = imaging.clean_output(clean_rgb)
    thumb, ext = imaging.result_thumbnail(image)
    assert data == clean_rgb and content_type == "image/png" and image.mode == "RGB"
    assert ext == "jpg" and decode(thumb).format == "JPEG" and decode(thumb).size == (480, 480)


def test_a_clean_png_with_transparency_still_gets_the_upload_guards():
    tall = Image.new("RGBA", (64, 64 * 11), (0, 0, 0, 0))  # longer than 10:1
    with pytest.raises(ImageRejected):
        imaging.clean_output(imaging.encode_png(tall))
    # Well-formed chunks (so no metadata is seen) around pixel data cut short:
    # only the first of its IDAT chunks is left.
    png = imaging.encode_png(astronaut().convert("RGBA"))
    first_idat = png.index(b"IDAT") - 4
    after_it = first_idat + 12 + int.from_bytes(png[first_idat : first_idat + 4], "big")
    damaged = png[:after_it] + png[png.index(b"IEND") - 4 :]
    assert not imaging.carries_metadata(damaged)
    with pytest.raises(ImageRejected):
        imaging.clean_output(damaged)


def test_thumbnail_and_faces_come_from_the_normalized_image(monkeypatch):
    seen = {}
    real_detect, real_thumb = imaging.detect_faces, imaging.make_thumbnail

    def detect_spy(image):
        seen["detect"] = image.size
        return real_detect(image)

    def thumb_spy(image, long_side=imaging.THUMB_LONG_SIDE):
        seen["thumb"] = image.size
        return real_thumb(image, long_side)

    monkeypatch.setattr(imaging, "detect_faces", detect_spy)
    monkeypatch.setattr(imaging, "make_thumbnail", thumb_spy)
    result = ingest(to_bytes(astronaut(4)), max_long_side=1024)  # 2048 px upload

    assert seen == {"detect": (1024, 1024), "thumb": (1024, 1024)}
    assert (result.width, result.height) == (1024, 1024)


# --------------------------------------------------------------------------
# faces
# --------------------------------------------------------------------------


def box_inside(box: FaceBox, x0, y0, x1, y1) -> bool:
    return x0 <= box.x and y0 <= box.y and box.x + box.w <= x1 and box.y + box.h <= y1


def test_astronaut_has_one_face_on_her_face():
    faces = detect_faces(astronaut())
    assert len(faces) == 1
    (face,) = faces
    assert box_inside(face, 160, 50, 290, 180)
    assert 80 <= face.w <= 130
    cx, cy = face.center
    assert 200 <= cx <= 250 and 90 <= cy <= 140


def test_face_box_scales_with_the_image():
    small = detect_faces(astronaut())[0]
    faces = detect_faces(astronaut(4))  # 2048 px; detected on a 1024 px copy
    assert len(faces) == 1
    big = faces[0]
    assert box_inside(big, 4 * 160, 4 * 50, 4 * 290, 4 * 180)
    assert abs(big.center[0] - 4 * small.center[0]) < 20
    assert abs(big.center[1] - 4 * small.center[1]) < 20
    assert abs(big.w - 4 * small.w) < 40


def test_two_faces_largest_first():
    faces = detect_faces(two_faces())
    assert len(faces) == 2
    areas = [f.w * f.h for f in faces]
    assert areas == sorted(areas, reverse=True)
    left, right = sorted(faces, key=lambda f: f.x)
    assert box_inside(left, 160, 50, 290, 180)
    # The mirrored copy: x mirrored around the composite's 1024 px width.
    assert box_inside(right, 1024 - 290, 50, 1024 - 160, 180)


def jpeg_roundtrip(img: Image.Image, quality: int = 85) -> Image.Image:
    return decode(to_bytes(img, "JPEG", quality=quality)).convert("RGB")


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: astronaut().resize((160, 160)), 1),  # tiny upload: enlarged for detection
        (lambda: jpeg_roundtrip(astronaut().resize((200, 200))), 1),
        (lambda: astronaut().resize((300, 300)), 1),
        (lambda: jpeg_roundtrip(astronaut().resize((700, 700))), 1),
        (lambda: astronaut(3), 1),
        (lambda: two_faces().resize((320, 160)), 2),
        (lambda: jpeg_roundtrip(two_faces().resize((1400, 700))), 2),
        (lambda: no_face().resize((768, 512)), 0),
        (lambda: jpeg_roundtrip(no_face().resize((1536, 1024))), 0),
    ],
)
def test_face_count_is_stable_across_sizes_and_compression(make, expected):
    assert len(detect_faces(make())) == expected


def test_coffee_cup_has_no_face():
    assert detect_faces(no_face()) == []
    assert ingest(to_bytes(no_face())).faces == []


def test_faces_in_ingest_are_in_normalized_coordinates():
    result = ingest(to_bytes(astronaut(4)), max_long_side=1024)
    assert len(result.faces) == 1
    assert box_inside(result.faces[0], 2 * 160, 2 * 50, 2 * 290, 2 * 180)


def test_faces_found_on_small_and_rotated_uploads():
    upright = marked_portrait((400, 300)).resize((300, 225))
    result = ingest(jpeg_with_orientation(stored_for(upright, 6), 6))
    assert (result.width, result.height) == (300, 225)
    assert len(result.faces) == 1
    cx, cy = result.faces[0].center
    assert 120 <= cx <= 200 and 50 <= cy <= 120


# --------------------------------------------------------------------------
# rejections
# --------------------------------------------------------------------------


def gif_bytes():
    return to_bytes(astronaut().convert("P"), "GIF")


def pdf_bytes():
    return to_bytes(astronaut(), "PDF")


def zip_bytes():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("selfie.jpg", to_bytes(astronaut()))
    return buf.getvalue()


def truncated_jpeg():
    data = to_bytes(astronaut())
    return data[: len(data) // 2]


def truncated_png():
    data = to_bytes(astronaut(), "PNG")
    return data[: len(data) // 2]


def truncated_heic():
    data = heic_bytes(astronaut())
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: b"", "This file is empty."),
        (truncated_jpeg, DAMAGED),
        (lambda: to_bytes(astronaut())[:300], DAMAGED),
        (truncated_png, DAMAGED),
        (truncated_heic, DAMAGED),
        (gif_bytes, f"This file is a GIF. {PLEASE}"),
        (lambda: to_bytes(astronaut(), "BMP"), f"This file is a BMP image. {PLEASE}"),
        (lambda: to_bytes(astronaut(), "TIFF"), "This file is a TIFF"),
        (pdf_bytes, f"This file is a PDF document. {PLEASE}"),
        (zip_bytes, "This file is a ZIP archive"),
        (
            lambda: b"<!DOCTYPE html>\n<html><body><img src='me.jpg'></body></html>",
            f"This file is a web page (HTML), not a photo. {PLEASE}",
        ),
        (
            lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
            "This file is an SVG drawing, not a photo.",
        ),
        (lambda: "my selfie, caf\u00e9\n".encode() * 50, "This file is a text file, not a photo."),
        (
            lambda: b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64),
            "This file is a video.",
        ),
        (lambda: b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64), "AVIF"),
        (lambda: b"\x00" + random.Random(1).randbytes(4000), "couldn't recognize"),
    ],
)
def test_rejected_files_say_why(make, expected):
    with pytest.raises(ImageRejected) as exc:
        ingest(make())
    assert expected in exc.value.message
    assert str(exc.value) == exc.value.message


def test_decompression_bomb_is_rejected_from_the_header():
    bomb = png_with_ihdr_size(30000, 30000)
    assert len(bomb) < 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's global warning is not what stops it
        with pytest.raises(ImageRejected) as exc:
            ingest(bomb)
    assert "too large" in exc.value.message and "50 megapixels" in exc.value.message


def test_pixel_limit_is_our_own_not_pillows():
    # 60 MP is below Pillow's default bomb limit (~89 MP), so only our check
    # stops it; and it does so before decoding (the pixel data is only 64x64,
    # so decoding would have reported a damaged file instead).
    assert Image.MAX_IMAGE_PIXELS > 60_000_000
    with pytest.raises(ImageRejected) as exc:
        ingest(png_with_ihdr_size(10000, 6000))
    assert exc.value.message.startswith("This image is too large (10000×6000 pixels)")


@pytest.mark.parametrize("size", [(1, 20000), (20000, 1), (100, 1200)])
def test_absurd_aspect_ratio_is_rejected(size):
    with pytest.raises(ImageRejected) as exc:
        ingest(png_with_ihdr_size(*size))
    assert "too long and narrow" in exc.value.message


def test_real_strip_is_rejected():
    strip = astronaut().resize((2000, 150))
    with pytest.raises(ImageRejected) as exc:
        ingest(to_bytes(strip))
    assert "too long and narrow" in exc.value.message


def test_ten_to_one_is_still_accepted():
    assert ingest(to_bytes(astronaut().resize((1000, 100)))).width == 1000


def test_byte_limit():
    data = to_bytes(astronaut())
    with pytest.raises(ImageRejected) as exc:
        ingest(data, max_bytes=len(data) - 1)
    assert "larger than" in exc.value.message
    assert ingest(data, max_bytes=len(data)).width == 512
    with pytest.raises(ImageRejected) as exc:
        ingest(b"\xff" * (imaging.MAX_UPLOAD_BYTES + 1))
    assert exc.value.message.startswith("This file is larger than 25 MB.")


@pytest.mark.parametrize("size", [(50, 50), (63, 400), (400, 63)])
def test_too_small_is_rejected(size):
    with pytest.raises(ImageRejected) as exc:
        ingest(to_bytes(astronaut().resize(size)))
    assert "too small" in exc.value.message


def test_smallest_accepted_size():
    assert ingest(to_bytes(astronaut().resize((64, 64)))).width == 64


def test_corrupted_files_only_ever_raise_image_rejected():
    rng = random.Random(1234)
    sources = [to_bytes(astronaut(), "JPEG"), to_bytes(astronaut().resize((128, 128)), "PNG")]
    sources.append(to_bytes(astronaut().resize((128, 128)), "WEBP"))
    samples = []
    for data in sources:
        for cut in (12, 40, 100, 400, len(data) // 3, len(data) - 10):
            samples.append(data[:cut])
        for _ in range(12):
            damaged = bytearray(data)
            for _ in range(rng.randint(1, 20)):
                pos = rng.randrange(2, len(damaged))
                damaged[pos] = rng.randrange(256)
            samples.append(bytes(damaged))
    for sample in samples:
        try:
            out = load_image(sample, max_long_side=256)
        except ImageRejected as exc:
            assert exc.message
        else:
            assert out.mode == "RGB" and max(out.size) <= 256


# --------------------------------------------------------------------------
# color modes
# --------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_correct_rgb():
    original = astronaut()
    data = to_bytes(original.convert("CMYK"), "JPEG", quality=95)
    assert decode(data).mode == "CMYK"

    out = decode(ingest(data).jpeg)

    assert out.mode == "RGB"
    assert correlation(out, original) > 0.98
    assert mean_abs_diff(out, original) < 10


def test_grayscale_jpeg_becomes_rgb():
    gray = astronaut().convert("L")
    result = ingest(to_bytes(gray, "JPEG"))
    out = np.asarray(decode(result.jpeg), dtype=np.int16)
    assert out.shape == (512, 512, 3)
    assert np.abs(out[..., 0] - out[..., 1]).max() <= 6  # neutral gray
    assert correlation(decode(result.jpeg), gray) > 0.98
    assert len(result.faces) == 1


def test_16_bit_grayscale_png_is_scaled_not_clipped():
    gray8 = np.asarray(astronaut().convert("L"))
    gray16 = gray8.astype(np.uint16) * 257
    data = to_bytes(Image.fromarray(gray16), "PNG")
    assert decode(data).mode == "I;16"

    out = load_image(data)

    assert out.mode == "RGB"
    arr = np.asarray(out)
    assert np.abs(arr[..., 1].astype(int) - gray8).max() <= 1
    assert 60 < arr.mean() < 200  # Pillow's own conversion would give ~255


def test_48_bit_rgb_and_64_bit_rgba_pngs():
    rgb8 = np.asarray(astronaut())
    rgb16 = rgb8.astype(np.uint16) * 257
    ok, png48 = cv2.imencode(".png", rgb16[..., ::-1])  # OpenCV writes BGR
    assert ok
    out = load_image(png48.tobytes())
    assert out.mode == "RGB"
    assert np.abs(np.asarray(out).astype(int) - rgb8).max() <= 1

    alpha = np.zeros(rgb16.shape[:2], np.uint16)
    alpha[:, :256] = 65535  # left half opaque, right half transparent
    ok, png64 = cv2.imencode(".png", np.dstack([rgb16[..., ::-1], alpha]))
    out = np.asarray(load_image(png64.tobytes()))
    assert np.abs(out[:, :256].astype(int) - rgb8[:, :256]).max() <= 1
    assert (out[:, 256:] == 255).all()


def test_palette_png_with_transparency_flattens_onto_white():
    pal = astronaut().convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    arr = np.asarray(pal).copy()
    arr[:, :100] = 255  # a palette index nothing else uses
    img = Image.fromarray(arr, mode="P")
    img.putpalette(pal.getpalette() + [0, 0, 0])  # index 255: black, but transparent
    data = to_bytes(img, "PNG", transparency=255)
    assert decode(data).mode == "P" and "transparency" in decode(data).info

    out = load_image(data)

    assert out.mode == "RGB"
    assert (np.asarray(out)[:, :100] == 255).all()
    right = out.crop((100, 0, 512, 512))
    assert correlation(right, astronaut().crop((100, 0, 512, 512))) > 0.95


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_flattened_onto_white(mode):
    base = astronaut().convert(mode[:-1] if mode == "LA" else "RGB")
    alpha = Image.new("L", base.size, 255)
    alpha.paste(0, (0, 0, 512, 100))  # transparent band at the top
    alpha.paste(128, (0, 100, 512, 200))  # half-transparent band
    img = base.convert(mode)
    img.putalpha(alpha)

    out = np.asarray(load_image(to_bytes(img, "PNG")), dtype=np.int16)
    ref = np.asarray(base.convert("RGB"), dtype=np.int16)

    assert out.shape == (512, 512, 3)
    assert (out[:100] == 255).all()
    blended = (ref[100:200] * 128.0 + 255 * 127) / 255
    assert np.abs(out[100:200] - blended).max() <= 2
    assert np.abs(out[200:] - ref[200:]).max() <= 1


def test_animated_webp_uses_first_frame():
    first = astronaut()
    second = ImageOps.invert(first)
    buf = io.BytesIO()
    first.save(buf, "WEBP", save_all=True, append_images=[second], duration=100, quality=90)
    data = buf.getvalue()
    assert decode(data).n_frames == 2

    result = ingest(data)

    assert result.source_format == "WEBP"
    assert correlation(decode(result.jpeg), first) > 0.97
    assert len(result.faces) == 1
