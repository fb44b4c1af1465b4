"""Load a TFLite classifier and run it: any of float32, float16, dynamic-range or full-integer."""
from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edge_app.core.metadata import ModelFileError, read_model_metadata
from edge_app.core.ood import ColourGuard
from edge_app.core.vision import CropSettings


def interpreter_class() -> tuple[type, str]:
    """The first TFLite interpreter available: ai_edge_litert, tflite_runtime, tensorflow.lite."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter, "tflite-runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf
        return tf.lite.Interpreter, "tensorflow"
    except ImportError:
        pass
    raise RuntimeError("no TFLite interpreter found: install one with  pip install \".[edge]\"  (ai-edge-litert)")


def runtime_version(runtime: str) -> str:
    """Installed version of the interpreter package, for reports."""
    from importlib.metadata import PackageNotFoundError, version
    for dist in {"ai-edge-litert": ["ai-edge-litert"], "tflite-runtime": ["tflite-runtime"],
                 "tensorflow": ["tensorflow", "tensorflow-cpu"]}[runtime]:
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"


# What the TFLite runtime's C++ logging writes at INFO level ("INFO: Created TensorFlow Lite XNNPACK delegate for
# CPU." on every load); no environment variable of ai-edge-litert turns it off.
RUNTIME_INFO_PREFIX = b"INFO: "


@contextmanager
def runtime_info_filtered() -> Iterator[None]:
    """Keep the runtime's INFO lines off stderr while a model loads; everything else written to stderr meanwhile
    (runtime errors, other threads' messages) is passed on once the block ends.

    The runtime writes to file descriptor 2 from C++, below sys.stderr, so fd 2 is pointed at a temporary file
    for the duration and put back.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = b"".join(line for line in captured if not line.startswith(RUNTIME_INFO_PREFIX))
            if kept:
                os.write(2, kept)


def default_threads() -> int:
    """Interpreter threads when none are asked for: every core (the fastest for one cell at a time on the
    machines measured, see benchmarks/README.md)."""
    return os.cpu_count() or 1


def input_value(rgb: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Pixels as an interpreter's input tensor (its get_input_details() entry) holds them: cast, or quantised."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return rgb.astype(dtype)
    scale, zero = detail["quantization"]
    if scale == 0:
        return rgb.astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(rgb.astype(np.float32) / scale + zero)
    return np.clip(q, info.min, info.max).astype(dtype)


def stored_calibration(metadata: dict[str, Any]) -> tuple[float, float]:
    """A model file's (temperature, answer threshold): 1 without a temperature, 0 (answer every cell) without
    a threshold."""
    return float(metadata.get("temperature", 1.0)), float(metadata.get("min_confidence") or 0.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, numerically stable."""
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Classifier:
    """A HematoVision TFLite model: labels and crop settings come from the file itself."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.metadata: dict[str, Any] = read_model_metadata(self.path)
        self.labels: list[str] = list(self.metadata["labels"])
        self.crop_settings = CropSettings.from_metadata(self.metadata)
        self.input_size = self.crop_settings.input_size
        self.output_kind = self.metadata.get("output", "logits")
        if self.output_kind not in ("logits", "probabilities"):
            raise ModelFileError(f"{self.path}: metadata 'output' must be logits or probabilities")
        # Below min_confidence (calibrated at the temperature) a cell is answered UNCERTAIN (0 = always answer).
        self.temperature, self.min_confidence = stored_calibration(self.metadata)
        # Crops whose colour statistics lie far from the training crops' are not forced into a class.
        self.colour_guard = ColourGuard.from_dict(self.metadata.get("ood"))
        self.threads = threads or default_threads()
        interpreter, self.runtime = interpreter_class()
        try:
            with runtime_info_filtered():  # the XNNPACK delegate is created, and announced, in allocate_tensors
                self._interp = interpreter(model_path=str(self.path), num_threads=self.threads)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{self.path}: the TFLite runtime cannot load it: {exc}") from exc
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{self.path}: expected one input and one output tensor")
        self._in, self._out = inputs[0], outputs[0]
        shape = tuple(int(v) for v in self._in["shape"])
        if len(shape) != 4 or shape[1:] != (self.input_size, self.input_size, 3):
            raise ModelFileError(f"{self.path}: input shape {shape} does not match the pipeline's "
                                 f"(1, {self.input_size}, {self.input_size}, 3)")
        if int(self._out["shape"][-1]) != len(self.labels):
            raise ModelFileError(f"{self.path}: {int(self._out['shape'][-1])} outputs but {len(self.labels)} labels")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def input_dtype(self) -> str:
        return np.dtype(self._in["dtype"]).name

    @property
    def output_dtype(self) -> str:
        return np.dtype(self._out["dtype"]).name

    def raw_outputs(self, rgb: np.ndarray) -> np.ndarray:
        """Dequantised model outputs (logits or probabilities) for one RGB uint8 crop S x S x 3."""
        if rgb.shape != (self.input_size, self.input_size, 3):
            raise ValueError(f"crop shape {rgb.shape}, model wants {(self.input_size, self.input_size, 3)}")
        self._interp.set_tensor(self._in["index"], input_value(rgb, self._in)[None])
        self._interp.invoke()
        out = self._interp.get_tensor(self._out["index"])[0]
        scale, zero = self._out["quantization"]
        if not np.issubdtype(out.dtype, np.floating):
            out = (out.astype(np.float32) - zero) * (scale if scale else 1.0)
        return out.astype(np.float32)

    def logits(self, raw: np.ndarray) -> np.ndarray:
        """Logits from raw outputs (a model that outputs probabilities gives their logarithm)."""
        return np.log(np.clip(raw, 1e-7, None)) if self.output_kind == "probabilities" else raw

    def probabilities(self, raw: np.ndarray, temperature: float | None = None) -> np.ndarray:
        """Calibrated class probabilities from raw outputs (sum to 1)."""
        return softmax(self.logits(raw), self.temperature if temperature is None else temperature)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """Class probabilities for one RGB uint8 crop."""
        return self.probabilities(self.raw_outputs(rgb))


def adaptation_note(metadata: dict[str, Any]) -> str:
    """What an adapted model (hemato adapt) was adapted on, in one line; "" for a model that was not."""
    record = metadata.get("adaptation")
    if not isinstance(record, dict):
        return ""
    counts = {k: v for k, v in (record.get("cells_per_class") or {}).items() if v}
    kept = record.get("kept_from_base") or []
    accuracy = record.get("cv_accuracy")
    return (f"adapted {record.get('date', '?')} from {record.get('base_file', '?')} on {sum(counts.values())} "
            f"reviewed cells ({', '.join(f'{k} {v}' for k, v in counts.items())})"
            + (f", {', '.join(kept)} as in the base" if kept else "")
            + (f", cross-validated accuracy {100 * accuracy:.1f} %" if accuracy is not None else ""))
