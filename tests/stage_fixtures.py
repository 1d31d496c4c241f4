"""A tiny random model with a byte-level chat tokenizer, a fake judge and a stage context, for stage tests.

The model is random (so its replies are gibberish), but every stage runs its real code path on it:
chat rendering, left padding, chunked generation, capture, directions and steering.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from emojax.data import EMOTIONS, load_dataset
from emojax.loading import LoadedModel
from emojax.model.config import ModelConfig
from emojax.model.params import random_params
from emojax.runs import RunDir
from emojax.runs.manifest import ModelIdentity
from emojax.stages.context import Preset, Settings, StageContext
from hf_fixtures import IM_END_ID, IM_START_ID, tiny_tokenizer, tiny_vocab

# The vocabulary is the tokenizer's: every id it emits has an embedding row.
TINY_CONFIG = ModelConfig(family="llama", vocab_size=len(tiny_vocab()), d_model=32, n_layers=4, n_heads=4,
                          n_kv_heads=2, head_dim=8, d_ff=48, rms_eps=1e-5, rope_theta=10000.0, tie_embeddings=True,
                          qkv_bias=False, max_position=1024, bos_token_id=IM_START_ID,
                          eos_token_ids=(IM_END_ID,), name="tiny")
# The same sizes with Gemma 3's block (post-sublayer norms, q/k norms, local and global layers, two RoPE
# bases, tanh-GELU, embedding scale), for the stages' shortcuts under post norms.
TINY_GEMMA_CONFIG = TINY_CONFIG.replace(
    family="gemma3", norm_offset=1.0, qk_norm=True, post_norms=True, activation="gelu_tanh",
    query_pre_attn_scalar=8.0, sliding_window=4, sliding_layers=(True, True, False, True), rope_theta=1e6,
    rope_local_theta=1e4, embed_scale=32 ** 0.5, name="tiny-gemma")
TINY_PRESET = Preset("tiny", train_per_theme=None, test_per_theme=None, max_new_tokens=4, batch_size=12,
                     validation_draws=1, causal_prompts=0, sweeps=False)


def tiny_loaded_model(seed: int = 0, config: ModelConfig = TINY_CONFIG) -> LoadedModel:
    params = random_params(config, seed=seed, scale=0.3)
    identity = ModelIdentity.from_params(config.name, params, config)
    return LoadedModel(params=params, config=config, tokenizer=tiny_tokenizer(), name=config.name,
                       source=Path("<random>"), source_hash=identity.content_hash, from_cache=False)


class FakeJudge:
    """Matches a text unless `reject(text, target)` says otherwise; records every call."""

    identity = "fake"

    def __init__(self, reject=lambda text, target: False) -> None:
        self.reject = reject
        self.calls: list[int] = []

    def __call__(self, texts: Sequence[str], targets: Sequence[str]):
        self.calls.append(len(texts))
        match = np.array([0 if self.reject(t, e) else 1 for t, e in zip(texts, targets)])
        return SimpleNamespace(match=match, scores=match.astype(float), errors=[None] * len(texts))


def split(n_records: int, name: str = "bundled:train", offset: int = 0):
    return load_dataset(name)[offset:offset + n_records]


def make_context(tmp_path: Path, *, model: LoadedModel | None = None, train=None, test=None, judge=None,
                 preset: Preset = TINY_PRESET, settings: Settings | None = None, run_name: str = "run"
                 ) -> StageContext:
    model = model or tiny_loaded_model()
    identity = ModelIdentity(model.name, str(model.source), model.source_hash,
                             dataclasses.asdict(model.config))
    run = RunDir.open(tmp_path / run_name, flags={"test": True}, model=identity, log_to_file=False)
    return StageContext(model=model, run=run, train=train if train is not None else split(2),
                        test=test if test is not None else split(1, "bundled:test"),
                        judge=judge or FakeJudge(), preset=preset, settings=settings or Settings())


def emotion_index(keys: Sequence[str]) -> np.ndarray:
    return np.array([EMOTIONS.index(k.split("__")[2]) for k in keys])


def fake_fluency(monkeypatch, fluent=lambda text: len(text) % 3 != 0) -> None:
    """Judged records carry fluency verdicts (`judge.fluent`, `judge.fluent_match`) decided by
    `fluent(text)` instead of the fitted rule, so stage tests choose which replies count as fluent."""
    from emojax.stages import judged, modulate

    original = judged.item_record

    def with_fluency(*args, **kwargs):
        record = original(*args, **kwargs)
        flag = int(bool(fluent(record["gen_text"])))
        record["judge"] = {**record["judge"], "fluent": flag, "fluent_match": int(record["judge"]["match"] and flag)}
        return record

    monkeypatch.setattr(judged, "item_record", with_fluency)
    monkeypatch.setattr(modulate, "item_record", with_fluency)
