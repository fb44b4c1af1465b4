"""Write the HematoVision JSON metadata into a TFLite flatbuffer (embed_metadata needs TensorFlow)."""
from __future__ import annotations

from typing import Any

import numpy as np

from edge_app.core.metadata import METADATA_NAME, ModelFileError, metadata_document, metadata_spans


def embed_metadata(tflite_bytes: bytes, metadata: dict[str, Any]) -> bytes:
    """Return the model with `metadata` stored as JSON under METADATA_NAME (replacing any earlier copy)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_bytes))
    document = metadata_document(metadata)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(document, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m) != METADATA_NAME] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def rewrite_metadata(tflite_bytes: bytes, metadata: dict[str, Any]) -> bytes:
    """The model with its HematoVision metadata replaced by `metadata` in place: every other byte is kept.

    The document is written compactly and padded with spaces (valid JSON) to the old one's length, so
    the flatbuffer's layout does not move; ModelFileError when it does not fit.
    """
    spans = metadata_spans(tflite_bytes)
    if METADATA_NAME not in spans:
        raise ModelFileError(f"the model has no '{METADATA_NAME}' metadata to rewrite")
    start, length = spans[METADATA_NAME]
    document = metadata_document(metadata, compact=True)
    if len(document) > length:
        raise ModelFileError(f"the new metadata ({len(document)} bytes) does not fit in place of the old "
                             f"({length} bytes): convert the model again")
    return tflite_bytes[:start] + document.ljust(length, b" ") + tflite_bytes[start + length:]


def _name(meta: Any) -> str:
    name = meta.name
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)
