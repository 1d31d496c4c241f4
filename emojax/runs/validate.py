"""Checks at the boundaries where a run reads something it did not make itself.

Flags, artefacts of another run (directions, circuits, arrays) and data files are checked once, on
the way in, so a mistake surfaces as one line naming the input instead of a shape error deep inside
a jitted function or a silently wrong result. Every failure raises `InputError`.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from emojax.data import EMOTIONS  # the canonical order every array axis over emotions uses
from emojax.runs.atomic import NPZ_META_KEY

Shape = Sequence[int | None]


class InputError(ValueError):
    """A flag, file or artefact that cannot be used; the message names it and says why."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_layer_index(flag_name: str, value: Any, n_layers: int) -> int:
    """`value` as a layer index in [0, n_layers); negative indices are refused, not wrapped."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"--{flag_name}={_short(value)} is not an integer layer index")
    if not 0 <= int(value) < n_layers:
        raise InputError(f"--{flag_name}={int(value)} is out of range: the model has {n_layers} layers "
                         f"(valid 0..{n_layers - 1})")
    return int(value)


def check_emotions(names: str | Iterable[str], flag_name: str = "emotions") -> tuple[str, ...]:
    """Known, distinct emotion names (a list or a comma-separated string), in canonical order."""
    given = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    given = [n for n in given if n]
    if not given:
        raise InputError(f"--{flag_name} is empty; choose from {', '.join(EMOTIONS)}")
    unknown = [n for n in given if n not in EMOTIONS]
    if unknown:
        raise InputError(f"--{flag_name}: unknown emotion(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(EMOTIONS)}")
    repeated = sorted({n for n in given if given.count(n) > 1})
    if repeated:
        raise InputError(f"--{flag_name}: emotion(s) listed twice: {', '.join(repeated)}")
    return tuple(e for e in EMOTIONS if e in given)


def _shape_matches(shape: tuple[int, ...], expected: Shape) -> bool:
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))


def _format_expected(expected: Shape) -> str:
    return "(" + ", ".join("*" if e is None else str(e) for e in expected) + ("," if len(expected) == 1 else "") + ")"


def read_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays of an npz file and its metadata ({} if it has none), refusing corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable npz file ({type(err).__name__}: {err})") from None
    meta_raw = arrays.pop(NPZ_META_KEY, None)
    if meta_raw is None:
        return arrays, {}
    try:
        meta = json.loads(str(meta_raw))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: metadata is not valid JSON ({err.msg})") from None
    return arrays, meta


def check_array_file(path: str | os.PathLike, expected_shapes: Mapping[str, Shape],
                     model_hash: str | None, nan_means_not_computed: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Load an npz artefact of another run and check it fits the current model.

    `expected_shapes` maps array names to shapes; None in a shape matches any size. When
    `model_hash` is given, the file's metadata must carry the same `model_hash` (artefacts are
    written with `write_npz(path, arrays, meta={"model_hash": ...})`). Float arrays must be finite,
    except that the arrays named in `nan_means_not_computed` may hold nan where their stage marks
    entries it did not compute (e.g. layers a causal scan skipped); inf is refused there too.
    """
    arrays, meta = read_npz(path)
    if model_hash is not None:
        found = meta.get("model_hash")
        if found is None:
            raise InputError(f"{path}: no model_hash in its metadata, so it cannot be matched to the current "
                             f"model {model_hash[:12]}")
        if found != model_hash:
            made_by = f" ({meta['model_name']})" if meta.get("model_name") else ""
            raise InputError(f"{path}: made with model {str(found)[:12]}{made_by}, not the current model "
                             f"{model_hash[:12]}")
    for name, expected in expected_shapes.items():
        if name not in arrays:
            raise InputError(f"{path}: no array {name!r} (has {', '.join(sorted(arrays)) or 'none'})")
        if not _shape_matches(arrays[name].shape, expected):
            raise InputError(f"{path}: array {name!r} has shape {arrays[name].shape}, expected "
                             f"{_format_expected(expected)}")
        array = arrays[name]
        if name in nan_means_not_computed:
            array = np.where(np.isnan(array), 0.0, array)
        check_finite(array, f"{path}: array {name!r}")
    return arrays


def check_finite(array: Any, what: str) -> None:
    """A float array holds no nan or inf; the error names `what` and the first bad index."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{what} holds {int(bad.sum())} non-finite values (nan or inf; the first at index "
                         f"{first}); recompute it with the stage that wrote it")


def non_finite_paths(value: Any, prefix: str = "") -> list[str]:
    """Where JSON-like data (dicts, lists, numbers) holds nan or inf, as "key.0.inner" paths."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [prefix]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite_paths(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in non_finite_paths(v, f"{prefix}.{i}" if prefix else str(i))]
    return []


def _circuit_layers(circuit: Any) -> list[tuple[Any, Any, Any]]:
    """(layer, neurons, heads) triples from a circuit record dict or an object with .neurons/.heads."""
    if hasattr(circuit, "neurons") and hasattr(circuit, "heads"):
        return [(l, ns, hs) for l, (ns, hs) in enumerate(zip(circuit.neurons, circuit.heads))]
    if not isinstance(circuit, Mapping) or not isinstance(circuit.get("layers"), list):
        raise TypeError("expected a circuit record with a 'layers' list")
    triples = []
    for item in circuit["layers"]:
        triples.append((item["layer"], item.get("mlp", {}).get("neurons", []),
                        item.get("attention", {}).get("heads", [])))
    return triples


def _check_ids(source: str, what: str, layer: int, ids: Any, limit: int, limit_name: str) -> None:
    if not isinstance(ids, (list, tuple)):
        raise InputError(f"{source}: layer {layer} {what}s is not a list")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise InputError(f"{source}: layer {layer} {what} id {_short(i)} is not an integer")
        if not 0 <= i < limit:
            raise InputError(f"{source}: layer {layer} {what} id {i} is out of range ({limit_name} = {limit})")
    if len(set(ids)) != len(ids):
        raise InputError(f"{source}: layer {layer} lists a {what} twice")


def check_circuit(circuit: Any, config: Any, source: str = "circuit", model_hash: str | None = None) -> None:
    """Every layer < n_layers, neuron id < d_ff and head id < n_heads; matching model hash if recorded.

    `circuit` is a circuit record (the JSON written by the circuit stage) or an object with per-layer
    `neurons` and `heads` sequences. `config` needs n_layers, d_ff and n_heads (a ModelConfig).
    """
    if model_hash is not None and isinstance(circuit, Mapping) and circuit.get("model_hash") not in (None, model_hash):
        raise InputError(f"{source}: made with model {str(circuit['model_hash'])[:12]}, not the current model "
                         f"{model_hash[:12]}")
    bad = non_finite_paths(circuit) if isinstance(circuit, Mapping) else []
    if bad:
        raise InputError(f"{source}: {bad[0]} is not a finite number (nan or inf); recompute the circuit")
    if isinstance(circuit, Mapping) and "emotion" in circuit and circuit["emotion"] not in EMOTIONS:
        raise InputError(f"{source}: unknown emotion {_short(circuit['emotion'])}")
    try:
        layers = _circuit_layers(circuit)
    except (KeyError, TypeError, AttributeError) as err:
        raise InputError(f"{source}: malformed circuit ({type(err).__name__}: {err})") from None
    seen: set[int] = set()
    for layer, neurons, heads in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise InputError(f"{source}: layer index {_short(layer)} is not an integer")
        if not 0 <= layer < config.n_layers:
            raise InputError(f"{source}: layer {layer} is out of range (n_layers = {config.n_layers})")
        if layer in seen:
            raise InputError(f"{source}: layer {layer} appears twice")
        seen.add(layer)
        _check_ids(source, "neuron", layer, neurons, config.d_ff, "d_ff")
        _check_ids(source, "head", layer, heads, config.n_heads, "n_heads")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file, with a one-line error naming the file and the line of any syntax error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON (line {err.lineno} column {err.colno}: {err.msg})") from None


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The records of a JSON-lines file; a bad line (e.g. a write cut short) names file and line."""
    return [record for _, record in numbered_jsonl(path)]


def numbered_jsonl(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """(line number, record) of every non-blank line of a JSON-lines file; a bad line names file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            cut_short = number == len(lines) and not text.endswith("\n")
            hint = "; the file looks truncated (last line has no newline)" if cut_short else ""
            raise InputError(f"{path} line {number}: not valid JSON ({err.msg}){hint}") from None
    return records


def numbered_objects(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """numbered_jsonl where every record must be a JSON object."""
    out = []
    for number, record in numbered_jsonl(path):
        if not isinstance(record, dict):
            raise InputError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
        out.append((number, record))
    return out
