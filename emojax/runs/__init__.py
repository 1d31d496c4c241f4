"""Reliable runs: run directories with manifests, atomic writes, resumable chunked loops, progress
reporting and input checks. See docs/runs.md."""
from emojax.runs.atomic import write_bytes, write_csv, write_json, write_jsonl, write_npz, write_text
from emojax.runs.chunks import ChunkedJob
from emojax.runs.manifest import NON_SEMANTIC_FLAGS, ModelIdentity, hash_arrays, hash_path
from emojax.runs.progress import Progress, interactive, track
from emojax.runs.rundir import RunDir, RunMismatchError, define_run_flags, set_determinism
from emojax.runs.validate import (EMOTIONS, InputError, check_array_file, check_circuit, check_emotions,
                                  check_finite, check_layer_index, read_json, read_jsonl, read_npz)

__all__ = [
    "EMOTIONS", "NON_SEMANTIC_FLAGS", "ChunkedJob", "InputError", "ModelIdentity", "Progress", "RunDir",
    "RunMismatchError", "check_array_file", "check_circuit", "check_emotions", "check_finite",
    "check_layer_index",
    "define_run_flags", "hash_arrays", "hash_path", "interactive", "read_json", "read_jsonl", "read_npz",
    "set_determinism", "track", "write_bytes", "write_csv", "write_json", "write_jsonl", "write_npz",
    "write_text",
]
