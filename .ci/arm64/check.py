"""Helpers for .ci/arm64-check (host side, run with the x86 virtualenv's python).

  check.py frames SAMPLES_DIR OUT_DIR       2x2 tiles of the sample images (320x240 each) as 640x480 PNG frames,
                                            the frames the fake picamera2 delivers
  check.py compare [--tol T] [--tol-uncertain U] [--camera SOURCE] REFERENCE.csv OTHER.csv
                                            the rows of OTHER against REFERENCE: the same rows (source, frame, cell;
                                            box edges within 2 px) and the same label (UNCERTAIN included) on every row; on rows with
                                            a class label also the same predicted class and every p_* within T.
                                            UNCERTAIN rows (borderline cells, which the app itself does not count)
                                            may differ in their best guess and by up to U in p_*: reported, not
                                            failed (aarch64 and x86-64 OpenCV resize the crops a little differently,
                                            and a borderline cell's probabilities move with that).
                                            With --camera, OTHER's rows from SOURCE (e.g. camera:picamera) are
                                            matched by frame number to REFERENCE's rows of the frame files in name
                                            order (REFERENCE being a run over the frames folder).
Prints one line of figures; exit status 1 when they differ.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

KEY = ("source", "frame", "cell")
EQUAL = ("label", "error")
BOX = ("x0", "y0", "x1", "y1")
# Frames are resampled to the model's red-cell scale before cells are located, and OpenCV's resize rounds a
# little differently on aarch64: a box edge may move by a pixel or two (measured: 1).
BOX_TOLERANCE_PX = 2


def make_frames(samples: Path, out: Path) -> None:
    import cv2
    import numpy as np

    images = [cv2.imread(str(p)) for p in sorted(samples.glob("*.jpeg"))]
    images = [cv2.resize(im, (320, 240), interpolation=cv2.INTER_AREA) for im in images if im is not None]
    if len(images) < 4:
        sys.exit(f"check.py: fewer than 4 sample images in {samples}")
    out.mkdir(parents=True, exist_ok=True)
    for k in range(len(images) // 4):
        a, b, c, d = images[4 * k:4 * k + 4]
        cv2.imwrite(str(out / f"frame_{k}.png"), np.vstack([np.hstack([a, b]), np.hstack([c, d])]))
    print(f"{len(images) // 4} frames of 640x480 in {out}")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def compare(reference: Path, other: Path, tol: float, tol_uncertain: float, camera: str | None) -> int:
    ref_rows, other_rows = read_rows(reference), read_rows(other)
    if camera:
        frame_of = {name: str(i) for i, name in enumerate(sorted({r["source"] for r in ref_rows}))}
        ref = {(camera, frame_of[r["source"]], r["cell"]): r for r in ref_rows}
        other_rows = [r for r in other_rows if r["source"] == camera]
    else:
        ref = {tuple(r[k] for k in KEY): r for r in ref_rows}
    got = {tuple(r[k] for k in KEY): r for r in other_rows}
    problems = []
    if set(ref) != set(got):
        problems.append(f"rows differ: only in {reference.name}: {sorted(set(ref) - set(got))}; "
                        f"only in {other.name}: {sorted(set(got) - set(ref))}")
    p_columns = [c for c in (ref_rows[0].keys() if ref_rows else []) if c.startswith("p_")]
    worst = {"classified": (0.0, None), "uncertain": (0.0, None)}
    labels_equal, guesses_differ = 0, []
    for key in sorted(set(ref) & set(got)):
        a, b = ref[key], got[key]
        for column in EQUAL:
            if a[column] != b[column]:
                problems.append(f"{'/'.join(key)}: {column} {a[column]!r} != {b[column]!r}")
        for column in BOX:
            if a[column] != b[column] and (not a[column] or not b[column]
                                           or abs(int(a[column]) - int(b[column])) > BOX_TOLERANCE_PX):
                problems.append(f"{'/'.join(key)}: {column} {a[column]!r} != {b[column]!r}")
        labels_equal += a["label"] == b["label"]
        kind = "uncertain" if "UNCERTAIN" in (a["label"], b["label"]) else "classified"
        if a["predicted"] != b["predicted"]:
            if kind == "classified":
                problems.append(f"{'/'.join(key)}: predicted {a['predicted']!r} != {b['predicted']!r}")
            else:
                guesses_differ.append(f"{'/'.join(key)} ({a['predicted']} {a['confidence']} vs "
                                      f"{b['predicted']} {b['confidence']})")
        for column in p_columns:
            if a[column] == b[column] == "":
                continue
            dp = abs(float(a[column]) - float(b[column]))
            if dp > worst[kind][0]:
                worst[kind] = (dp, f"{'/'.join(key)} {column}")
    for kind, limit in (("classified", tol), ("uncertain", tol_uncertain)):
        if worst[kind][0] > limit:
            problems.append(f"max |dp| on {kind} rows {worst[kind][0]:.4f} > {limit} ({worst[kind][1]})")
    compared = len(set(ref) & set(got))
    if compared == 0:
        problems.append("no rows to compare")
    n_uncertain = sum("UNCERTAIN" in (ref[k]["label"], got[k]["label"]) for k in set(ref) & set(got))
    print(f"rows compared {compared} (reference {len(ref)}, other {len(got)}); labels equal {labels_equal}/{compared}; "
          f"max |dp| {worst['classified'][0]:.4f} on {compared - n_uncertain} classified rows (tolerance {tol}), "
          f"{worst['uncertain'][0]:.4f} on {n_uncertain} UNCERTAIN rows (tolerance {tol_uncertain}): "
          f"{'FAIL' if problems else 'PASS'}")
    for kind, (dp, where) in worst.items():
        if where:
            print(f"  largest |dp| on {kind} rows: {dp:.4f} at {where}")
    if guesses_differ:
        print(f"  UNCERTAIN rows whose best guess differs (reported, not failed): {'; '.join(guesses_differ)}")
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    frames = sub.add_parser("frames")
    frames.add_argument("samples", type=Path)
    frames.add_argument("out", type=Path)
    comp = sub.add_parser("compare")
    comp.add_argument("--tol", type=float, default=0.02)
    comp.add_argument("--tol-uncertain", type=float, default=0.3)
    comp.add_argument("--camera")
    comp.add_argument("reference", type=Path)
    comp.add_argument("other", type=Path)
    args = parser.parse_args()
    if args.command == "frames":
        make_frames(args.samples, args.out)
        return 0
    return compare(args.reference, args.other, args.tol, args.tol_uncertain, args.camera)


if __name__ == "__main__":
    sys.exit(main())
