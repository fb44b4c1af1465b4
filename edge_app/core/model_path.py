"""Where the device looks for its model when none is named: one rule shared by `hemato run`, `serve` and `info`.

The shipped models (models/ in the repository) are installed as the package `hemato_models` (see
pyproject.toml), so a plain `pip install ".[edge]"` finds them from any folder.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from edge_app.core.metadata import ModelFileError

# The int8 file: the fastest, and on TEST no less accurate than float32 (models/README.md).
DEFAULT_MODEL_NAME = "wbc_mobilenetv2_int8.tflite"
MODEL_ENV = "HEMATO_MODEL"
MODELS_PACKAGE = "hemato_models"
MODEL_HELP = (f"the .tflite model (default: ${MODEL_ENV}, else models/{DEFAULT_MODEL_NAME} in the current folder, "
              "else the model installed with hemato)")


def installed_models_folder() -> Path:
    """The folder of the models installed with hemato (the package hemato_models, found by importlib.resources);
    in a checkout run without installing, the repository's models/."""
    try:
        return Path(str(resources.files(MODELS_PACKAGE)))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "models"


def default_model_path() -> Path:
    """$HEMATO_MODEL, else ./models/<default>, else the installed <default> (returned even if absent)."""
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV]).expanduser()
    local = Path.cwd() / "models" / DEFAULT_MODEL_NAME
    if local.is_file():
        return local
    return installed_models_folder() / DEFAULT_MODEL_NAME


def find_model(explicit: str | None) -> Path:
    """The named model, else default_model_path(); ModelFileError naming the paths tried when it is absent."""
    if explicit:
        return Path(explicit).expanduser()
    path = default_model_path()
    if path.is_file():
        return path
    if os.environ.get(MODEL_ENV):
        raise ModelFileError(f"model file not found: {path} (from ${MODEL_ENV})")
    tried = dict.fromkeys([Path.cwd() / "models" / DEFAULT_MODEL_NAME, path])
    raise ModelFileError(f"no model found (tried {' and '.join(str(p) for p in tried)}): "
                         f"pass --model PATH.tflite or set {MODEL_ENV}")
