"""Atomic file writes and embedding export (TSV for the TensorBoard projector, and .npz).

Every file is first written under a hidden temporary name in its own folder and then renamed over
the target, so a run killed at any moment leaves either the old file or the new one, never half.
"""
import json
import math
import os
import secrets

import numpy as np

VECTORS_FILE = "vectors.tsv"
METADATA_FILE = "metadata.tsv"
ARRAYS_FILE = "embeddings.npz"
PROJECTOR_FILE = "projector_config.pbtxt"


def atomic_write(path, write):
    """Call ``write(temporary_path)``, then move that file onto ``path``; returns ``path``.

    The temporary file lies beside ``path`` under a hidden name with the same extension (so writers
    that infer the format from the name, or append one, keep it) and is removed if ``write`` fails.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, extension = os.path.splitext(name)
    temporary = os.path.join(folder, f".{stem}-{secrets.token_hex(4)}.tmp{extension}")
    try:
        write(temporary)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(temporary):
        with open(temporary, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)

    return atomic_write(path, write)


def to_jsonable(obj):
    """``obj`` with numpy scalars and arrays made plain Python, tuples made lists, NaN/inf made None."""
    if isinstance(obj, dict):
        return {str(key): to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(value) for value in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, obj):
    """Write ``obj`` as JSON (indent 2, sorted keys, strictly no NaN) to ``path`` atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False)
    return write_text(path, text + "\n")


def _escape(value):
    """A metadata cell: str of ``value`` with backslash, tab and line breaks escaped."""
    text = str(value)
    for raw, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
        text = text.replace(raw, escaped)
    return text


def export_embeddings(folder, embeddings, metadata, log_dir=None):
    """Write ``vectors.tsv``, ``metadata.tsv`` and ``embeddings.npz`` into ``folder``.

    ``embeddings`` is (N, D); ``metadata`` maps column name -> N values (e.g. label, split, domain).
    ``metadata.tsv`` has a header row, as the TensorBoard projector expects for several columns. The
    .npz holds ``embeddings`` and one unicode array per column (loads with ``allow_pickle=False``).
    With ``log_dir``, also writes ``log_dir/projector_config.pbtxt`` pointing at the two TSV files.
    Returns a dict of the written paths.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, D), got shape {embeddings.shape}")
    if not metadata:
        raise ValueError("metadata needs at least one column, e.g. {'label': [...]}")
    if "embeddings" in metadata:
        raise ValueError("metadata column name 'embeddings' is reserved for the vectors")
    columns = {str(name): [str(value) for value in values] for name, values in metadata.items()}
    for name, values in columns.items():
        if len(values) != len(embeddings):
            raise ValueError(f"metadata column {name!r} has {len(values)} values for {len(embeddings)} embeddings")

    paths = {key: os.path.join(folder, name) for key, name in
             (("vectors", VECTORS_FILE), ("metadata", METADATA_FILE), ("arrays", ARRAYS_FILE))}
    atomic_write(paths["vectors"], lambda tmp: np.savetxt(tmp, embeddings, fmt="%.9g", delimiter="\t"))
    rows = [list(columns)] + [list(row) for row in zip(*columns.values())]
    write_text(paths["metadata"], "".join("\t".join(map(_escape, row)) + "\n" for row in rows))
    arrays = {name: np.asarray(values, dtype=str) for name, values in columns.items()}
    atomic_write(paths["arrays"], lambda tmp: np.savez(tmp, embeddings=embeddings, **arrays))

    if log_dir is not None:
        log_dir = os.path.abspath(log_dir)
        # Paths relative to log_dir, quoted as JSON strings (valid protobuf text-format strings).
        tensor_path, metadata_path = (
            json.dumps(os.path.relpath(os.path.abspath(paths[key]), log_dir), ensure_ascii=False)
            for key in ("vectors", "metadata"))
        config = f"embeddings {{\n  tensor_path: {tensor_path}\n  metadata_path: {metadata_path}\n}}\n"
        paths["projector"] = write_text(os.path.join(log_dir, PROJECTOR_FILE), config)
    return paths
