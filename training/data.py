"""Read a labelled image dataset (class folders, optional TRAIN/TEST folders, or a CSV)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from edge_app.core.dataset import images_in
SPLIT_NAMES = {"train": "train", "test": "test", "val": "val", "validation": "val"}


class DatasetError(ValueError):
    """The dataset cannot be used; the message says why and names the files."""


def read_folder(root: Path) -> pd.DataFrame:
    """Read ROOT/<CLASS>/* or ROOT/{TRAIN,TEST}/<CLASS>/* into filepath,label,split rows."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    split_dirs = [p for p in subdirs if p.name.lower() in SPLIT_NAMES]
    rows = []
    if split_dirs:
        for split_dir in split_dirs:
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                rows += [(str(f), class_dir.name, SPLIT_NAMES[split_dir.name.lower()]) for f in images_in(class_dir)]
    else:
        for class_dir in subdirs:
            rows += [(str(f), class_dir.name, "train") for f in images_in(class_dir)]
    if not rows:
        raise DatasetError(f"no images under {root}: expected <CLASS>/*.jpg or TRAIN/<CLASS>/*.jpg")
    return pd.DataFrame(rows, columns=["filepath", "label", "split"])


def read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV with columns filepath,label[,split][,group]; relative paths are from the CSV's folder."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str)
    except Exception as exc:  # pandas raises many types for unreadable CSVs
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    missing = {"filepath", "label"} - set(frame.columns)
    if missing:
        raise DatasetError(f"{path} lacks column(s) {sorted(missing)}; expected filepath,label[,split][,group]")
    frame = frame.dropna(subset=["filepath", "label"]).copy()
    frame["filepath"] = [str(p if Path(p).is_absolute() else path.parent / p) for p in frame["filepath"]]
    if "split" in frame.columns:
        bad = sorted(set(frame["split"].fillna("train").str.lower()) - set(SPLIT_NAMES))
        if bad:
            raise DatasetError(f"{path}: unknown split value(s) {bad}; use train, val or test")
        frame["split"] = frame["split"].fillna("train").str.lower().map(SPLIT_NAMES)
    else:
        frame["split"] = "train"
    missing_files = [p for p in frame["filepath"] if not Path(p).is_file()]
    if missing_files:
        shown = ", ".join(missing_files[:5]) + (" ..." if len(missing_files) > 5 else "")
        raise DatasetError(f"{len(missing_files)} file(s) listed in {path} do not exist: {shown}")
    return frame.reset_index(drop=True)


def read_dataset(sources: Path | list[Path]) -> pd.DataFrame:
    """Read one or several datasets (folders or CSV files) into one frame; each row keeps its `source`.

    A folder's source is its name (`blood-cells`, `pbc`); a CSV's is its `source` column, else its file
    name. Sources may have different class sets: the labels are their union.
    """
    paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    if not paths:
        raise DatasetError("no dataset given")
    frames = []
    for path in paths:
        frame = read_csv(path) if path.suffix.lower() == ".csv" else read_folder(path)
        if "source" not in frame.columns:
            frame["source"] = path.stem if path.suffix.lower() == ".csv" else path.resolve().name
        frame["source"] = frame["source"].fillna(path.stem)
        if "group" not in frame.columns:
            frame["group"] = None
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    if frame["filepath"].duplicated().any():
        raise DatasetError(f"an image is listed twice, e.g. {frame['filepath'][frame['filepath'].duplicated()].iloc[0]}")
    if frame["label"].nunique() < 2:
        raise DatasetError(f"{', '.join(map(str, paths))}: need at least two classes, found "
                           f"{sorted(frame['label'].unique())}")
    return frame


def class_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Images per class, source and split, for the report printed before training."""
    return frame.pivot_table(index="label", columns=["source", "split"], values="filepath", aggfunc="count",
                             fill_value=0)
