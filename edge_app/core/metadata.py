"""Read the JSON document a HematoVision model carries in its TFLite flatbuffer metadata.

Pure Python (no flatbuffers package, no TensorFlow), so the device can read labels, input
size and crop settings from the model file itself.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

METADATA_NAME = "hemato_edge"
FORMAT = "hemato-edge/1"

# Field numbers in the TFLite schema (tensorflow/lite/schema/schema.fbs).
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


class ModelFileError(ValueError):
    """The file is not a usable HematoVision TFLite model; the message says why."""


def metadata_document(metadata: dict[str, Any]) -> bytes:
    """The JSON bytes a model stores under METADATA_NAME: `metadata` with the FORMAT tag, keys sorted."""
    return json.dumps({"format": FORMAT, **metadata}, sort_keys=True).encode("utf-8")


class _Table:
    """A flatbuffer table: just enough of the format to follow fields, vectors and strings."""

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable_size = struct.unpack_from("<H", buf, vtable)[0]
        self.vtable = vtable

    def _field(self, index: int) -> int | None:
        entry = 4 + 2 * index
        if entry >= self.vtable_size:
            return None
        offset = struct.unpack_from("<H", self.buf, self.vtable + entry)[0]
        return self.pos + offset if offset else None

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        at = self._field(index)
        return default if at is None else struct.unpack_from(fmt, self.buf, at)[0]

    def _vector(self, index: int) -> tuple[int, int] | None:
        at = self._field(index)
        if at is None:
            return None
        start = at + struct.unpack_from("<I", self.buf, at)[0]
        return start + 4, struct.unpack_from("<I", self.buf, start)[0]

    def bytes_span(self, index: int) -> tuple[int, int] | None:
        """(start, length) of a byte vector in the buffer."""
        return self._vector(index)

    def bytes_field(self, index: int) -> bytes | None:
        vec = self._vector(index)
        return None if vec is None else self.buf[vec[0]:vec[0] + vec[1]]

    def tables(self, index: int) -> list["_Table"]:
        vec = self._vector(index)
        if vec is None:
            return []
        out = []
        for k in range(vec[1]):
            elem = vec[0] + 4 * k
            out.append(_Table(self.buf, elem + struct.unpack_from("<I", self.buf, elem)[0]))
        return out


def metadata_buffers(model: _Table) -> list[tuple[str, _Table]]:
    """(name, Buffer table) of each metadata entry of a TFLite Model table."""
    buffers = model.tables(_MODEL_BUFFERS)
    return [((meta.bytes_field(_METADATA_NAME) or b"").decode("utf-8", "replace"),
             buffers[meta.scalar(_METADATA_BUFFER, "<I")]) for meta in model.tables(_MODEL_METADATA)]


def model_table(model_bytes: bytes) -> _Table:
    """The root Model table of a TFLite flatbuffer; ModelFileError when the bytes are not one."""
    if len(model_bytes) < 8 or model_bytes[4:8] != b"TFL3":
        raise ModelFileError("not a TFLite model (no TFL3 identifier)")
    try:
        return _Table(model_bytes, struct.unpack_from("<I", model_bytes, 0)[0])
    except (struct.error, IndexError) as exc:
        raise ModelFileError(f"corrupt TFLite flatbuffer: {exc}") from exc


def metadata_spans(model_bytes: bytes) -> dict[str, tuple[int, int]]:
    """Where each metadata entry of a TFLite flatbuffer lies in it: {name: (start, length)}."""
    model = model_table(model_bytes)
    try:
        spans = {}
        for name, buffer in metadata_buffers(model):
            span = buffer.bytes_span(_BUFFER_DATA)
            offset = buffer.scalar(_BUFFER_OFFSET, "<Q")
            if not (span and span[1]) and offset > 1:
                span = (offset, buffer.scalar(_BUFFER_SIZE, "<Q"))
            spans[name] = span or (0, 0)
        return spans
    except (struct.error, IndexError) as exc:
        raise ModelFileError(f"corrupt TFLite flatbuffer: {exc}") from exc


def read_tflite_metadata(model_bytes: bytes) -> dict[str, bytes]:
    """Return every metadata entry of a TFLite flatbuffer as {name: raw bytes}."""
    return {name: bytes(model_bytes[start:start + length])
            for name, (start, length) in metadata_spans(model_bytes).items()}


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The HematoVision metadata (labels, input size, crop settings, ...) stored in a .tflite file."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file: give the .tflite file in it")
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    entries = read_tflite_metadata(path.read_bytes())
    if METADATA_NAME not in entries:
        raise ModelFileError(f"{path} has no '{METADATA_NAME}' metadata (labels, input size): "
                             "convert it with `hemato convert`")
    try:
        meta = json.loads(entries[METADATA_NAME].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: metadata is not valid JSON: {exc}") from exc
    labels = meta.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels):
        raise ModelFileError(f"{path}: metadata has no usable 'labels' list")
    if len(set(labels)) != len(labels):
        raise ModelFileError(f"{path}: metadata labels are not unique: {labels}")
    return meta
