"""The offline judge's throughput, and the fluency pass against one plain prefill of the same tokens.

`judge_offline`: the shipped offline judge (features and verdicts, one process) on the sentences of
emojax's bundled SEV splits, each judged against one target: texts of about a short reply's length.
`judge_reader`: the shipped reader judge (one forward of the embedded SmolLM2 per reply batch, then the
head and the n-gram judge) on the same texts. Every benchmark's first call (loading, compiling) is
not timed.
`fluency_pass`: `emojax.judge.perplexity.reply_nll` (one forward with the LM head over the reply columns
only) on BATCH rows of SEQ tokens whose last REPLY columns are the reply, against `emojax.forward` with
`logits="last"` on the same tokens, taking turns; `ratio` is their time ratio (goal: at most 1.2).
Neither has an HF baseline.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from emojax import forward
from emojax.data.sev import BUNDLED_SPLITS, EMOTIONS, load_dataset
from emojax.judge.offline import OfflineJudge
from emojax.judge.perplexity import reply_nll
from emojax.judge.reader_judge import ReaderJudge
from experiments.bench.common import BenchContext, peak_rss_mb, time_call, time_interleaved

# The quick preset's shape: 48 rows, 32 new tokens after prompts of about 60 tokens.
BATCH, SEQ, REPLY = 48, 96, 32


def _sev_texts() -> tuple[list[str], list[str]]:
    """The bundled splits' scenario and event sentences, each with one target."""
    texts = []
    for split in BUNDLED_SPLITS:
        for record in load_dataset(f"bundled:{split}"):
            texts += [record.scenario, *(record.event(v) for v in ("positive", "neutral", "negative"))]
    return texts, [EMOTIONS[i % len(EMOTIONS)] for i in range(len(texts))]


def bench_judge_offline(ctx: BenchContext) -> dict[str, Any]:
    texts, targets = _sev_texts()
    return _judge_figures(OfflineJudge(), texts, targets, ctx.repeats)


def bench_judge_reader(ctx: BenchContext) -> dict[str, Any]:
    texts, targets = _sev_texts()
    return _judge_figures(ReaderJudge(), texts, targets, ctx.repeats)


def _judge_figures(judge: Any, texts: list[str], targets: list[str], repeats: int) -> dict[str, Any]:
    timing = time_call(lambda: judge(texts, targets), repeats)
    return {"emojax_s": timing.median_s, "baseline_s": None, "speedup": None, "texts": len(texts),
            "replies_per_s": len(texts) / timing.median_s, "mean_chars": float(np.mean([len(t) for t in texts])),
            "emojax_runs_s": list(timing.runs_s), "peak_rss_mb": peak_rss_mb()}


def bench_fluency_pass(ctx: BenchContext) -> dict[str, Any]:
    tokens = jnp.asarray(ctx.tokens(BATCH, SEQ))
    mask = jnp.ones((BATCH, SEQ), bool)
    reply_mask = jnp.ones((BATCH, REPLY), bool)
    fns = {"fluency": lambda: reply_nll(ctx.params, tokens, mask, reply_mask, config=ctx.config, reply_width=REPLY),
           "prefill": lambda: forward(ctx.params, tokens, config=ctx.config, mask=mask, logits="last").logits}
    timings = time_interleaved(fns, ctx.repeats)
    fluency, prefill = timings["fluency"], timings["prefill"]
    return {"emojax_s": fluency.median_s, "baseline_s": None, "speedup": None, "prefill_s": prefill.median_s,
            "ratio": fluency.median_s / prefill.median_s, "replies_per_s": BATCH / fluency.median_s,
            "batch": BATCH, "seq": SEQ, "reply_tokens": REPLY, "emojax_runs_s": list(fluency.runs_s),
            "prefill_runs_s": list(prefill.runs_s), "peak_rss_mb": peak_rss_mb()}
