"""Where the device looks for its model when none is named: one rule shared by `hemato run` and `serve`."""
from __future__ import annotations

import os
from pathlib import Path

# The int8 file: it passes the parity gate on TEST (hemato verify; models/README.md) and is the fastest.
DEFAULT_MODEL_NAME = "wbc_mobilenetv2_int8.tflite"
MODEL_ENV = "HEMATO_MODEL"


def default_model_path() -> Path:
    """$HEMATO_MODEL, else ./models/<default>, else <repo root>/models/<default> (returned even if absent)."""
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV]).expanduser()
    local = Path.cwd() / "models" / DEFAULT_MODEL_NAME
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[1] / "models" / DEFAULT_MODEL_NAME
