"""Outputs of the main compiled programs on tiny random models, for comparing XLA option sets.

Usage: python xla_options_worker.py OUT.npz   (XLA_FLAGS as the caller wants them)

`test_quick_compile.py` runs this under XLA's default options and compares the arrays with the same
programs compiled under the test suite's quick-compile options.
"""
from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from emojax import Intervention, TapSpec, forward
from emojax.generation.loop import generate_tokens
from emojax.model.config import ModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, when run as a script
from parallel_checks import numpy_params  # noqa: E402

CONFIGS = {
    "llama": dict(family="llama", vocab_size=128, d_model=48, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16,
                  d_ff=96, rms_eps=1e-5, rope_theta=10000.0, tie_embeddings=False, qkv_bias=False,
                  eos_token_ids=(3,)),
    "qwen2": dict(family="qwen2", vocab_size=128, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, head_dim=8,
                  d_ff=80, rms_eps=1e-6, rope_theta=1e6, tie_embeddings=True, qkv_bias=True,
                  eos_token_ids=(3,)),
}


def edits(cfg: ModelConfig, seed: int) -> Intervention:
    """Every edit field non-trivial, residual edits from the last prompt token on."""
    rng = np.random.default_rng(seed)
    iv = Intervention.identity(cfg, resid_where="from_last")
    return iv.replace(
        resid_add_rms=jnp.asarray(rng.normal(0, 0.5, iv.resid_add_rms.shape), jnp.float32),
        neuron_scale=jnp.asarray(rng.uniform(0, 2, iv.neuron_scale.shape), jnp.float32),
        head_scale=jnp.asarray(rng.uniform(0, 2, iv.head_scale.shape), jnp.float32),
        head_add=jnp.asarray(rng.normal(0, 0.1, iv.head_add.shape), jnp.float32))


def outputs() -> dict[str, np.ndarray]:
    results = {}
    for seed, (name, fields) in enumerate(CONFIGS.items()):
        cfg = ModelConfig(**fields)
        params = numpy_params(cfg, seed, scale=0.3)
        rng = np.random.default_rng(100 + seed)
        tokens = rng.integers(4, cfg.vocab_size, (3, 9)).astype(np.int32)
        mask = np.ones_like(tokens, bool)
        mask[0, :4] = mask[1, :2] = False
        iv = edits(cfg, seed)
        out = forward(params, tokens, config=cfg, mask=mask, iv=iv,
                      taps=TapSpec(points=("z", "g", "resid_post"), at="all"))
        results[f"{name}/logits"] = np.asarray(out.logits)
        for point, value in out.taps.items():
            results[f"{name}/tap_{point}"] = np.asarray(value)

        if name != "llama":  # the forward pass alone covers the other family's options
            continue

        def last_logit(add: jax.Array) -> jax.Array:  # a gradient, as attribution scans take them
            moved = iv.replace(resid_add=add)
            return forward(params, tokens, config=cfg, mask=mask, iv=moved).logits[:, -1, 5].sum()

        results[f"{name}/grad"] = np.asarray(jax.grad(last_logit)(iv.resid_add))
        generated = generate_tokens(params, tokens, mask, config=cfg, max_new_tokens=12, iv=iv,
                                    repetition_penalty=1.1, no_repeat_ngram_size=3, min_new_tokens=4)
        results[f"{name}/generated"] = np.asarray(generated.tokens)
    return results


if __name__ == "__main__":
    np.savez(sys.argv[1], **outputs())
