"""List labelled images from class folders, without pandas, for verification and benchmarks."""
from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def images_in(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in a folder (by suffix), sorted."""
    folder = Path(folder)
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def labelled_images(root: Path) -> list[tuple[Path, str]]:
    """(path, label) for ROOT/<LABEL>/*image*; raises ValueError when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of class folders")
    pairs = [(p, d.name) for d in sorted(root.iterdir()) if d.is_dir() for p in images_in(d)]
    if not pairs:
        raise ValueError(f"no labelled images under {root}: expected {root}/<CLASS>/*.jpg")
    return pairs
