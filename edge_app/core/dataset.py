"""List labelled images, without pandas, for verification and benchmarks.

Two layouts: class folders (ROOT/<CLASS>/*.jpg) or, as in samples/, the class as the file name's prefix
(ROOT/<class>_<anything>.jpg, eosinophil_0_5239.jpeg); labels are upper-cased in the second.
"""
from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")  # what the decoder reads


def images_in(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in a folder (by suffix), sorted."""
    folder = Path(folder)
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def label_from_name(path: Path) -> str | None:
    """The class a file name starts with (eosinophil_0_5239.jpeg -> EOSINOPHIL), or None without a prefix."""
    prefix, sep, _ = path.stem.partition("_")
    return prefix.upper() if sep and prefix else None


def labelled_images(root: Path) -> list[tuple[Path, str]]:
    """(path, label) for ROOT/<LABEL>/*image*, else for ROOT/<label>_*image* (the samples/ layout);
    raises ValueError when there are none, or when a loose image has no class prefix."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    pairs = [(p, d.name) for d in sorted(root.iterdir()) if d.is_dir() for p in images_in(d)]
    if pairs:
        return pairs
    loose = images_in(root)
    unnamed = [p.name for p in loose if label_from_name(p) is None]
    if unnamed:
        raise ValueError(f"cannot tell the class of {', '.join(unnamed[:3])}{' ...' if len(unnamed) > 3 else ''} "
                         f"in {root}: name files <class>_<anything>.jpg or put them in {root}/<CLASS>/")
    if not loose:
        raise ValueError(f"no labelled images under {root}: expected {root}/<CLASS>/*.jpg or {root}/<class>_*.jpg")
    return [(p, label_from_name(p)) for p in loose]


def split_rows(csv_path: Path, split: str = "val") -> list[dict[str, str]]:
    """The rows of a run's splits.csv (filepath,label,split[,group][,source]) in `split`, paths resolved.

    A relative path is tried as written (from the folder training ran in), then from the CSV's folder.
    Raises ValueError when the file lacks the columns or a listed image is missing.
    """
    import csv
    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"filepath", "label", "split"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path} lacks column(s) {sorted(missing)}; "
                             "expected filepath,label,split[,group][,source]")
        rows = [row for row in reader if row["split"] == split]
    absent = []
    for row in rows:
        path = Path(row["filepath"])
        if not path.is_absolute() and not path.exists() and (csv_path.parent / path).exists():
            path = csv_path.parent / path
        row["filepath"] = str(path)
        if not path.exists():
            absent.append(path)
    if absent:
        which = "validation" if split == "val" else split
        raise ValueError(f"{len(absent)} of {len(rows)} {which} images in {csv_path} are missing "
                         f"(e.g. {absent[0]}); run from the folder training ran in")
    return rows
