"""A small resumable stage, run as a subprocess by tests that kill it and resume it.

Usage: python chunked_worker.py RUN_DIR

Two chunked jobs (arrays, then JSON records) with a short sleep per chunk, then the assembled final
outputs. Every chunk computation prints `computed <job> <start>`, so a test can count how much work
a resume repeated.
"""
from __future__ import annotations

import sys
import time

import numpy as np
from absl import logging

from emojax.runs import ChunkedJob, RunDir, write_csv, write_jsonl, write_npz

N_ITEMS = 40
CHUNK_SIZE = 4
SLEEP_S = 0.05
FLAGS = {"seed": 7, "n_items": N_ITEMS, "chunk_size": CHUNK_SIZE}


def item_features(start: int, stop: int) -> dict[str, np.ndarray]:
    rows = [np.random.default_rng([FLAGS["seed"], i]).standard_normal(16).astype(np.float32)
            for i in range(start, stop)]
    x = np.stack(rows)
    # A float reduction whose result depends on operation order: resumes must not change it.
    return {"x": x, "energy": np.cumsum(x * x, axis=1)[:, -1], "item": np.arange(start, stop)}


def item_records(features: dict[str, np.ndarray]):
    def compute(start: int, stop: int) -> list[dict]:
        return [{"item": i, "score": float(features["energy"][i]) / 3.0, "label": f"item-{i}"}
                for i in range(start, stop)]
    return compute


def slow(compute, job: str):
    def wrapped(start: int, stop: int):
        time.sleep(SLEEP_S)
        print(f"computed {job} {start}", flush=True)
        return compute(start, stop)
    return wrapped


def main(run_dir: str) -> None:
    with RunDir.open(run_dir, flags=FLAGS) as run:
        stage = run.stage("sweep")
        features = ChunkedJob(stage, "features", N_ITEMS, CHUNK_SIZE, FLAGS).run(slow(item_features, "features"))
        records = ChunkedJob(stage, "records", N_ITEMS, CHUNK_SIZE, FLAGS).run(
            slow(item_records(features), "records"))
        write_npz(stage / "features.npz", features, meta={"model_hash": "none"})
        write_jsonl(stage / "records.jsonl", records)
        write_csv(stage / "records.csv", records)
        run.mark_done("sweep", {"items": N_ITEMS})
    print("finished", flush=True)


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    main(sys.argv[1])
