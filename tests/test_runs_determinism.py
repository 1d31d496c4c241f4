"""The same small stage (a tiny model's forward pass over prompts, in chunks) run twice writes
bitwise-identical outputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from emojax.model.config import ModelConfig
from emojax.model.forward import forward
from emojax.model.params import param_shapes
from emojax.model.taps import TapSpec
from emojax.runs import ChunkedJob, ModelIdentity, RunDir, write_csv, write_npz

CONFIG = ModelConfig(family="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                     head_dim=8, d_ff=48, rms_eps=1e-5, rope_theta=10000.0, tie_embeddings=True,
                     qkv_bias=False, name="tiny")
RUN_RECORDS = {"manifest.json", "invocations.jsonl", "run.log", "done.json", ".lock"}


def numpy_params(shapes: dict, rng: np.random.Generator) -> dict:
    """Random weights made with NumPy (fast: no per-leaf compilation)."""
    return {k: numpy_params(v, rng) if isinstance(v, dict) else
            (0.2 * rng.standard_normal(v) + ("norm" in k)).astype(np.float32) for k, v in sorted(shapes.items())}


def readout_stage(run_dir: Path, chunk_size: int = 3) -> None:
    params = numpy_params(param_shapes(CONFIG), np.random.default_rng(0))
    model = ModelIdentity.from_params("tiny", params, CONFIG)
    tokens = np.random.default_rng(0).integers(0, CONFIG.vocab_size, size=(12, 7)).astype(np.int32)
    mask = np.arange(7)[None, :] >= (np.arange(12) % 4)[:, None]  # left padding
    flags = {"chunk_size": chunk_size, "n_prompts": len(tokens)}
    with RunDir.open(run_dir, flags=flags, model=model, log_to_file=False) as run:
        stage = run.stage("readout")

        def compute(start: int, stop: int) -> dict[str, np.ndarray]:
            out = forward(params, tokens[start:stop], config=CONFIG, mask=mask[start:stop],
                          taps=TapSpec(points=("resid_post",)), logits="last")
            return {"resid_post": np.asarray(out.taps["resid_post"]), "logits": np.asarray(out.logits[:, 0])}

        result = ChunkedJob(stage, "forward", len(tokens), chunk_size, model.content_hash).run(compute)
        write_npz(stage / "readout.npz", result, meta={"model_hash": model.content_hash})
        top = result["logits"].argmax(axis=-1)
        write_csv(stage / "top_tokens.csv", [{"prompt": i, "token": int(t), "logit": float(result["logits"][i, t])}
                                             for i, t in enumerate(top)])
        run.mark_done("readout")


def _outputs(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in RUN_RECORDS}


def test_same_stage_twice_is_bitwise_identical(tmp_path):
    readout_stage(tmp_path / "first")
    readout_stage(tmp_path / "second")
    first, second = _outputs(tmp_path / "first"), _outputs(tmp_path / "second")
    assert "readout/readout.npz" in first and len(first) == 1 + 1 + 1 + 4  # outputs, index, 4 chunks
    assert first == second
