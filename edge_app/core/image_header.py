"""What an image file says about itself in its first bytes: format, size, sample depth, completeness.

Read without decoding, so `hemato run` can refuse empty, truncated, unsupported or huge files before
OpenCV allocates anything for them.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

# Formats OpenCV may read but `hemato run` does not accept (first bytes -> name).
_UNSUPPORTED_MAGIC = [
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"%PDF", "PDF"), (b"8BPS", "Photoshop PSD"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"), (b"\x00\x00\x01\x00", "ICO"), (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"),
]
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"heim": "HEIC", b"heis": "HEIC",
                b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}
# JPEG start-of-frame markers (not DHT C4, JPG C8, DAC CC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class HeaderError(ValueError):
    """The file cannot be used; the message (one line) says why and goes into the CSV's error column."""


@dataclass(frozen=True)
class Header:
    """An image's format and size as its header states them."""

    format: str          # JPEG, PNG, BMP, TIFF or WebP
    width: int
    height: int
    sample_bytes: int = 1  # bytes per colour sample as decoded (2 for 16-bit PNG/TIFF)


def sniff(data: bytes) -> str:
    """The format named by the first bytes; HeaderError for anything that is not JPEG/PNG/BMP/TIFF/WebP."""
    if data[:2] == b"\xff\xd8":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for magic, name in _UNSUPPORTED_MAGIC:
        if data.startswith(magic):
            raise HeaderError(f"unsupported format: {name}")
    if data[4:8] == b"ftyp" and data[8:12] in _FTYP_BRANDS:
        raise HeaderError(f"unsupported format: {_FTYP_BRANDS[data[8:12]]}")
    if data[128:132] == b"DICM":
        raise HeaderError("unsupported format: DICOM")
    raise HeaderError("not an image (unrecognised format)")


def read_header(data: bytes) -> Header:
    """Format, size and sample depth from the header; HeaderError when it is unsupported, corrupt or truncated."""
    fmt = sniff(data)
    try:
        header = {"JPEG": _jpeg, "PNG": _png, "BMP": _bmp, "TIFF": _tiff, "WebP": _webp}[fmt](data)
    except (struct.error, IndexError):
        raise HeaderError(f"truncated {fmt} (the header is incomplete)") from None
    if header.width <= 0 or header.height <= 0:
        raise HeaderError(f"corrupt {fmt} header (size {header.width}x{header.height})")
    return header


def _jpeg(data: bytes) -> Header:
    """Walk the markers to the first scan: the frame header gives the size; no EOI after it means truncated."""
    pos, size = 2, None
    while True:
        if data[pos] != 0xFF:
            raise HeaderError("corrupt JPEG header (bad marker)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker == 0xD9:
            raise HeaderError("corrupt JPEG (it ends before any image data)")
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if length < 2:
            raise HeaderError("corrupt JPEG header (bad segment length)")
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, pos + 5)
            size = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows, which never contains FF D9
            if size is None:
                raise HeaderError("corrupt JPEG header (no frame header)")
            if data.rfind(b"\xff\xd9") < pos:
                raise HeaderError("truncated JPEG (no end-of-image marker)")
            return Header("JPEG", *size)
        pos += 2 + length


def _png(data: bytes) -> Header:
    if data[12:16] != b"IHDR":
        raise HeaderError("corrupt PNG header (no IHDR chunk)")
    width, height, depth = struct.unpack_from(">IIB", data, 16)
    if data.rfind(b"IEND") < 33:
        raise HeaderError("truncated PNG (no IEND chunk)")
    return Header("PNG", width, height, 2 if depth == 16 else 1)


def _bmp(data: bytes) -> Header:
    offset, dib = struct.unpack_from("<II", data, 10)
    if dib == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bpp = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    else:
        width, height, _, bpp, compression = struct.unpack_from("<iiHHI", data, 18)
    height = abs(height)  # negative: stored top-down
    if compression in (0, 3) and 0 < width and len(data) < offset + (width * bpp + 31) // 32 * 4 * height:
        raise HeaderError("truncated BMP (pixel data incomplete)")
    return Header("BMP", width, height)


def _tiff(data: bytes) -> Header:
    """The first image file directory: ImageWidth, ImageLength and BitsPerSample."""
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    count = struct.unpack_from(order + "H", data, ifd)[0]
    tags = {}
    for k in range(count):
        tag, kind, n, value = struct.unpack_from(order + "HHI4s", data, ifd + 2 + 12 * k)
        if kind == 3:  # SHORT: the first value is inline when n <= 2, else at an offset
            raw = value if n <= 2 else data[struct.unpack(order + "I", value)[0]:][:2]
            tags[tag] = struct.unpack_from(order + "H", raw)[0]
        elif kind == 4:  # LONG
            raw = value if n <= 1 else data[struct.unpack(order + "I", value)[0]:][:4]
            tags[tag] = struct.unpack_from(order + "I", raw)[0]
    if 256 not in tags or 257 not in tags:
        raise HeaderError("corrupt TIFF header (no image size)")
    return Header("TIFF", tags[256], tags[257], max(1, (tags.get(258, 8) + 7) // 8))


def _webp(data: bytes) -> Header:
    if len(data) < struct.unpack_from("<I", data, 4)[0] + 8:
        raise HeaderError("truncated WebP (shorter than its RIFF size)")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise HeaderError("corrupt WebP header (no VP8 start code)")
        width, height = struct.unpack_from("<HH", data, 26)
        return Header("WebP", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        bits = struct.unpack_from("<I", data, 21)[0]
        return Header("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width, height = (int.from_bytes(data[at:at + 3], "little") + 1 for at in (24, 27))
        return Header("WebP", width, height)
    raise HeaderError("corrupt WebP header (unknown first chunk)")
