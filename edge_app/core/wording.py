"""Results in words for a person: confidences, one cell's answer, what UNCERTAIN means.

Shared by `hemato run` (a line per image, the summary), the overlay drawn on images and the web viewer,
so that the terminal, the picture and the page say the same thing.
"""
from __future__ import annotations

import math
from typing import Sequence

from edge_app.core.pipeline import UNCERTAIN, UNUSUAL_CROP, CellResult

NOT_DIAGNOSTIC = "Not a diagnostic device: a qualified person must confirm every result."


def naming(path: object | None, message: object) -> str:
    """An error message led by the file it is about, unless it already names it (or no file is known)."""
    text = str(message)
    return text if path is None or str(path) in text else f"{path}: {text}"


def percent(p: float) -> str:
    """A probability as a percentage rounded down to 0.1 (so a cell below the threshold never shows above it)."""
    return f"{math.floor(1000 * float(p) + 1e-9) / 10:.1f} %"


def threshold_text(threshold: float) -> str:
    """The answer threshold as a percentage to 0.01 (99.17 %), the precision it is stored with."""
    return f"{100 * threshold:.2f} %"


def cell_answer(cell: CellResult, labels: Sequence[str], threshold: float | None = None,
                compact: bool = False) -> str:
    """One cell's answer: 'EOSINOPHIL 99.6 %', or UNCERTAIN with the best guess, the runner-up and why.

    compact: without the why, for a line listing several cells.
    """
    if not cell.uncertain:
        return f"{cell.label} {percent(cell.confidence)}"
    runner = labels[cell.runner_up]
    guess = f"best guess {cell.predicted} {percent(cell.confidence)}, runner-up {runner} " \
            f"{percent(cell.probabilities[cell.runner_up])}"
    if compact:
        return f"{UNCERTAIN} ({guess})"
    if cell.flag == UNUSUAL_CROP:
        why = "colours unlike the training cells"
    elif threshold:
        why = f"below the {threshold_text(threshold)} threshold"
    else:
        why = cell.flag or "low confidence"
    return f"{UNCERTAIN} ({guess}; {why})"


def image_answer(cells: Sequence[CellResult], labels: Sequence[str], threshold: float | None = None) -> str:
    """A whole image's answer: one cell's, 'no cell found', or 'N cells: ...' compactly."""
    if not cells:
        return "no cell found"
    if len(cells) == 1:
        return cell_answer(cells[0], labels, threshold)
    return f"{len(cells)} cells: " + "; ".join(cell_answer(c, labels, threshold, compact=True) for c in cells)


def overlay_label(cell: CellResult) -> str:
    """The label drawn beside a box: 'EOSINOPHIL 99.6%', or 'UNCERTAIN (EOSINOPHIL?)' without a percentage,
    which beside UNCERTAIN would read as a contradiction."""
    if cell.uncertain:
        return f"{UNCERTAIN} ({cell.predicted}?)"
    return f"{cell.label} {percent(cell.confidence).replace(' ', '')}"


def uncertain_meaning(threshold: float, colour_guard: bool) -> str:
    """What an UNCERTAIN answer means, for the summary and the page."""
    reasons = []
    if threshold > 0:
        reasons.append(f"the model's confidence was below its threshold of {threshold_text(threshold)}")
    if colour_guard:
        reasons.append("the cell's colours were unlike those of the training cells")
    if not reasons:
        return "This model answers every cell (it has no threshold): check every answer."
    return (f"{UNCERTAIN} means {' or '.join(reasons)}: the model does not decide, a person classifies the cell "
            "(the best guess and the runner-up are given). UNCERTAIN cells are left out of the percentages.")
