"""Bad input: a corpus of unusable and unusual images, and a few hundred randomly damaged JPEG/PNG files.

Every unusable image becomes one CSV row whose error says why, and the run goes on; unusual but valid
images (grey, RGBA, palette, 16-bit, CMYK, EXIF-rotated, huge) are converted and classified. Outcomes per
category are written to test-artifacts/bad_inputs_summary.json.
"""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from conftest import NUCLEUS_BGR, make_smear
from edge_app.core.image_decode import ImageError, decode_image
from edge_app.core.sources import read_image
from hemato.cli import main as hemato

REPO = Path(__file__).resolve().parents[1]
SUMMARY = REPO / "test-artifacts" / "bad_inputs_summary.json"


def record_summary(key: str, value: object) -> None:
    """Merge one test's outcome table into the shared summary file."""
    SUMMARY.parent.mkdir(exist_ok=True)
    data = json.loads(SUMMARY.read_text()) if SUMMARY.is_file() else {}
    data[key] = value
    SUMMARY.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def category(message: str) -> str:
    """The kind of an error message: 'truncated JPEG', 'image too large', ..."""
    return message.split(":")[0].split(" (")[0]


def rows_by_source(path: Path) -> dict[str, list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(os.path.basename(row["source"]), []).append(row)
    return out


def encode(bgr: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    ok, data = cv2.imencode(ext, bgr, params or [])
    assert ok
    return data.tobytes()


def pil(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int, depth: int = 8) -> bytes:
    """A PNG that claims a size but holds no pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def jpeg_claiming(data: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header is patched to claim another size."""
    at = data.index(b"\xff\xc0")
    return data[:at + 5] + struct.pack(">HH", height, width) + data[at + 9:]


SMEAR = make_smear(seed=1)  # 320 x 240, one purple nucleus in the middle
RGB = Image.fromarray(SMEAR[:, :, ::-1].copy())

# name -> (bytes, expected error ("" = converted and decoded), a cell must be found)
def bad_corpus() -> dict[str, tuple[bytes, str]]:
    jpg, png = encode(SMEAR, ".jpg"), encode(SMEAR, ".png")
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0xFF
    gif = pil(RGB.convert("P"), "GIF")
    return {
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (jpg[:len(jpg) * 6 // 10], "truncated JPEG (no end-of-image marker)"),
        "header_only.jpg": (jpg[:jpg.index(b"\xff\xda")], "truncated JPEG (the header is incomplete)"),
        "corrupt_marker.jpg": (jpg[:2] + b"\x00" + jpg[3:], "corrupt JPEG header (bad marker)"),
        "truncated.png": (png[:len(png) * 7 // 10], "truncated PNG (no IEND chunk)"),
        "corrupt_data.png": (bytes(flipped), "damaged PNG: it cannot be decoded"),
        "truncated.bmp": (encode(SMEAR, ".bmp")[:50_000], "truncated BMP (pixel data incomplete)"),
        "truncated_webp.jpg": (encode(SMEAR, ".webp")[:5_000], "truncated WebP (shorter than its RIFF size)"),
        "truncated.tif": (encode(SMEAR, ".tif")[:50_000], "truncated TIFF (the header is incomplete)"),
        "notes.jpg": (b"Sample 17, smear 3: re-stain tomorrow.\n" * 20, "not an image (unrecognised format)"),
        "page.png": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not an image (unrecognised format)"),
        "zeros.jpg": (bytes(4096), "not an image (unrecognised format)"),
        "animation.png": (gif, "unsupported format: GIF"),
        "iphone.jpg": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(2000), "unsupported format: HEIC"),
        "tiny.png": (encode(SMEAR[:20, :20], ".png"), "image too small (20x20; a cell needs at least 32 px a side)"),
        "sliver.jpg": (encode(make_smear(400, 16), ".jpg"), "image too small (400x16; a cell needs at least 32 px a side)"),
        "bomb.png": (png_header_only(50_000, 50_000), "image too large: 50000x50000 is 2500 MP (the limit is 100 MP)"),
        "bomb.jpg": (jpeg_claiming(jpg, 60_000, 60_000), "image too large: 60000x60000 is 3600 MP (the limit is 100 MP)"),
        "deep_bomb.png": (png_header_only(8_000, 8_000, 16),
                          "image too large: 8000x8000 is 64 MP (the limit is 50 MP at 16 bits)"),
    }


def converted_corpus() -> dict[str, tuple[bytes, bool]]:
    """Valid images in unusual encodings: name -> (bytes, whether the smear's cell must be found)."""
    alpha = np.full(SMEAR.shape[:2], 255, np.uint8)
    alpha[:, :30] = 0  # a transparent strip
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return {
        "grey.png": (pil(RGB.convert("L"), "PNG"), False),
        "grey.jpg": (pil(RGB.convert("L"), "JPEG"), False),
        "grey_alpha.png": (pil(RGB.convert("LA"), "PNG"), False),
        "bilevel.png": (pil(RGB.convert("1"), "PNG"), False),
        "rgba.png": (encode(np.dstack([SMEAR, alpha]), ".png"), True),
        "palette.png": (pil(RGB.quantize(64), "PNG"), True),
        "palette_transparent.png": (pil(RGB.quantize(64), "PNG", transparency=0), True),
        "sixteen_bit.png": (encode(SMEAR.astype(np.uint16) * 257, ".png"), True),
        "twelve_bit.png": (encode(SMEAR.astype(np.uint16) * 16, ".png"), True),
        "grey16.png": (encode(cv2.cvtColor(SMEAR, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257, ".png"), False),
        "sixteen_bit.tif": (encode(SMEAR.astype(np.uint16) * 257, ".tif"), True),
        "cmyk.jpg": (pil(RGB.convert("CMYK"), "JPEG", quality=95), True),
        "exif_rotated.jpg": (pil(RGB, "JPEG", exif=exif, quality=95), True),
        "progressive.jpg": (encode(SMEAR, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), True),
        "smear.bmp": (encode(SMEAR, ".bmp"), True),
        "smear.tif": (encode(SMEAR, ".tif"), True),
        "webp_named.jpg": (encode(SMEAR, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), True),
        "png_named.jpg": (encode(SMEAR, ".png"), True),
    }


def test_bad_input_corpus_one_error_row_each_and_unusual_images_classified(tmp_path, tiny_tflite, capsys):
    folder = tmp_path / "incoming"
    folder.mkdir()
    bad, converted = bad_corpus(), converted_corpus()
    for name, (data, _) in {**bad, **converted}.items():
        (folder / name).write_bytes(data)
    with open(folder / "huge_file.jpg", "wb") as f:  # sparse: costs no disk, refused before reading
        f.write(encode(SMEAR, ".jpg"))
        f.truncate(201 * 2**20)
    bad["huge_file.jpg"] = (b"", "file too large: 201 MB (the limit is 200 MB)")

    out = tmp_path / "r.csv"
    assert hemato(["run", str(folder), "--model", str(tiny_tflite), "--csv", str(out)]) == 0
    rows = rows_by_source(out)
    outcomes = {}
    for name, (_, error) in bad.items():
        assert [r["error"] for r in rows.get(name, [])] == [error], name
        assert rows[name][0]["label"] == "" and rows[name][0]["p_EOSINOPHIL"] == ""
        outcomes[name] = error
    for name, (_, cell) in converted.items():
        assert all(r["error"] == "" for r in rows.get(name, [])), name
        if cell:
            assert rows.get(name) and rows[name][0]["label"], f"{name}: no cell classified"
        outcomes[name] = f"classified ({len(rows.get(name, []))} cells)" if name in rows else "decoded, no cell"
    summary = capsys.readouterr().out
    total = len(bad) + len(converted)
    assert f"Images read: {total}  ({len(bad)} failed" in summary
    record_summary("corpus", {"tried": total, "unusable_with_error_row": len(bad),
                              "converted_and_read": len(converted), "outcomes": outcomes})


def test_conversions_keep_the_colours():
    corpus = converted_corpus()
    for name in ("rgba.png", "sixteen_bit.png", "twelve_bit.png", "sixteen_bit.tif", "smear.bmp", "smear.tif"):
        image = decode_image(corpus[name][0]).image
        assert image.dtype == np.uint8 and image.shape == SMEAR.shape
        assert np.abs(image.astype(int) - SMEAR).max() <= 1, name  # lossless formats: exact (alpha ignored)
    for name in ("cmyk.jpg", "palette.png", "webp_named.jpg"):
        image = decode_image(corpus[name][0]).image
        assert image.shape == SMEAR.shape and np.abs(image.astype(int) - SMEAR).mean() < 6, name
    grey = decode_image(corpus["grey.png"][0]).image
    assert grey.shape == SMEAR.shape and (grey[..., 0] == grey[..., 2]).all()


def test_exif_orientation_is_applied_and_boxes_are_upright(tmp_path, tiny_tflite):
    smear = make_smear(cells=[(80, 60, 28)], seed=2)  # nucleus in the top-left quarter
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    path.write_bytes(pil(Image.fromarray(smear[:, :, ::-1].copy()), "JPEG", exif=exif, quality=95))
    image, error = read_image(path)
    upright = cv2.rotate(smear, cv2.ROTATE_90_CLOCKWISE)  # what a viewer shows
    assert error == "" and image.shape == upright.shape == (320, 240, 3)
    assert np.abs(image.astype(int) - upright).mean() < 4
    out = tmp_path / "r.csv"
    assert hemato(["run", str(path), "--model", str(tiny_tflite), "--csv", str(out)]) == 0
    (row,) = rows_by_source(out)["rotated.jpg"]
    x, y = 240 - 1 - 60, 80  # the nucleus after the rotation
    assert int(row["x0"]) < x < int(row["x1"]) and int(row["y0"]) < y < int(row["y1"])


def test_huge_jpeg_is_decoded_reduced_and_boxes_are_in_source_pixels(tmp_path, tiny_tflite):
    big = np.full((5000, 5000, 3), (215, 205, 230), np.uint8)  # no noise: keep the test light
    cv2.circle(big, (3500, 1500), 600, NUCLEUS_BGR, -1)
    path = tmp_path / "scan.jpg"
    path.write_bytes(encode(big, ".jpg"))
    del big
    image, error = read_image(path)
    assert error == "" and image.shape == (2500, 2500, 3)  # libjpeg decoded it at 1/2 scale
    out = tmp_path / "r.csv"
    assert hemato(["run", str(path), "--model", str(tiny_tflite), "--csv", str(out)]) == 0
    (row,) = rows_by_source(out)["scan.jpg"]
    x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
    assert x0 < 3500 - 600 and x1 > 3500 + 600 and y0 < 1500 - 600 and y1 > 1500 + 600
    assert x1 - x0 < 3000  # the box is around the nucleus, in the 5000-pixel image


def test_a_10000_pixel_jpeg_is_read_without_allocating_it(tmp_path):
    path = tmp_path / "huge.jpg"
    path.write_bytes(encode(np.full((10_000, 10_000), 200, np.uint8), ".jpg"))
    code = ("import resource, sys\nfrom edge_app.core.sources import read_image\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"image, error = read_image({str(path)!r})\n"
            "grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024\n"
            "print(image.shape, repr(error), grown)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    shape, error, grown_mb = result.stdout.rsplit(" ", 2)
    assert shape == "(2500, 2500, 3)" and error == "''"
    assert int(grown_mb) < 150  # 300 MB if it were decoded whole


# --- fuzz: randomly damaged JPEG/PNG bytes --------------------------------------------------------

MUTATIONS = ("truncate", "bit_flips", "overwrite_chunk", "delete_chunk", "header_only")
CASES_PER_PAIR = 30  # 3 bases x 5 mutations x 30 = 450 damaged files


def damage(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    if kind == "truncate":
        return bytes(out[:int(rng.integers(0, len(out)))])
    if kind == "bit_flips":
        for _ in range(int(rng.integers(1, 24))):
            out[int(rng.integers(0, len(out)))] ^= 1 << int(rng.integers(0, 8))
        return bytes(out)
    if kind == "overwrite_chunk":
        at, size = int(rng.integers(0, len(out))), int(rng.integers(1, 512))
        chunk = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        out[at:at + size] = chunk[:len(out) - at]
        return bytes(out)
    if kind == "delete_chunk":
        at = int(rng.integers(0, len(out)))
        del out[at:at + int(rng.integers(1, 2048))]
        return bytes(out)
    return bytes(out[:int(rng.integers(0, 1024))])  # header_only


def fuzz_cases() -> list[tuple[str, str, bytes]]:
    smear = make_smear(480, 360, cells=[(150, 150, 40), (330, 220, 45)], seed=5)
    bases = {"jpeg": encode(smear, ".jpg"), "jpeg_progressive": encode(smear, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
             "png": encode(smear, ".png")}
    rng = np.random.default_rng(20240607)
    return [(base, kind, damage(data, kind, rng)) for base, data in bases.items() for kind in MUTATIONS
            for _ in range(CASES_PER_PAIR)]


def test_fuzz_damaged_files_give_an_image_or_a_clean_error(tmp_path, tiny_tflite):
    outcomes: dict[str, Counter] = {}
    failed_names = set()
    folder = tmp_path / "fuzz"
    folder.mkdir()
    for k, (base, kind, data) in enumerate(fuzz_cases()):
        name = f"{k:03d}_{base}_{kind}" + (".png" if base == "png" else ".jpg")
        try:
            image = decode_image(data).image
            outcome = "image"
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 32
        except ImageError as exc:
            message = str(exc)
            assert message and "\n" not in message
            outcome = f"error: {category(message)}"
            failed_names.add(name)
        outcomes.setdefault(f"{base}/{kind}", Counter())[outcome] += 1
        if k % 3 == 0 or outcome != "image":  # the run below gets every failure and a third of the rest
            (folder / name).write_bytes(data)

    # The same damaged files through `hemato run`: it goes on, with one error row for each failure.
    out = tmp_path / "fuzz.csv"
    assert hemato(["run", str(folder), "--model", str(tiny_tflite), "--csv", str(out)]) == 0
    rows = rows_by_source(out)
    assert {name for name, named in rows.items() if named[0]["error"]} == failed_names
    assert all(len(rows[name]) == 1 for name in failed_names)

    table = {pair: dict(sorted(counts.items())) for pair, counts in sorted(outcomes.items())}
    totals = Counter()
    for counts in outcomes.values():
        totals.update(counts)
    record_summary("fuzz", {"tried": sum(totals.values()), "seed": 20240607, "outcomes_total": dict(sorted(totals.items())),
                            "outcomes": table,
                            "through_hemato_run": len(list(folder.iterdir()))})
    print(json.dumps(table, indent=1))
    assert sum(totals.values()) == 3 * len(MUTATIONS) * CASES_PER_PAIR
