"""The benchmark peers (experiments/bench/peer_*.py) agree with emojax on a tiny random model.

Each scan peer runs a sample of each scan's variants its own way and must reproduce emojax's
effects; the generation peers must produce emojax's steered tokens. Needs the `bench` extra
(nnsight, transformer-lens); skipped without it.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("nnsight")
pytest.importorskip("transformer_lens")

import jax.numpy as jnp  # noqa: E402

from experiments.bench import generate as bench_generate  # noqa: E402
from experiments.bench import scans as bench_scans  # noqa: E402
from experiments.bench.common import BenchContext, BenchSizes  # noqa: E402
from experiments.bench.peers import GENERATION_PEERS, PEER_NAMES, SCAN_PEERS  # noqa: E402

# Small batches so every batched peer runs several chunks, one of them partial.
SIZES = BenchSizes(scan_prompts=3, neuron_layers=(0, 1), peer_sample=5, peer_batch_rows=6, prefix_batch_rows=9,
                   generate_batch=3, generate_tokens=4)


@pytest.fixture(scope="module")
def ctx(tiny_model) -> BenchContext:
    tiny = tiny_model("llama_gqa_tied")
    return BenchContext(tiny.name, tiny.config, tiny.params, None, jnp.float32, repeats=1, baseline=True,
                        peers=PEER_NAMES, sizes=SIZES)


def _check_scan(result: dict, skipped: tuple[str, ...] = (), all_positions: bool = False) -> None:
    assert set(result["peers"]) == set(SCAN_PEERS)
    for name, peer in result["peers"].items():
        if name in skipped:
            assert peer["seconds"] is None and peer["skipped"], name
            continue
        assert peer["seconds"] > 0, name
        assert peer["max_abs_diff"] <= 1e-4 * result["effect_scale"], (name, peer["max_abs_diff"])
        if all_positions:
            continue
        # hf_prefix also reruns the edited layer; a full forward per variant does far more work
        least = result["emojax_gflop"] * (1.0 if peer["batching"] == "suffix" else 2.0)
        assert peer["gflop"] >= least and peer["pct_of_peak"] > 0, name
    assert result["effect_scale"] > 1e-3  # the edits change the read-out, so agreement is not trivial
    assert all_positions != ("emojax_pct_of_peak" in result)


@pytest.mark.parametrize("bench", [bench_scans.bench_head_scan, bench_scans.bench_sublayer_scan,
                                   bench_scans.bench_neuron_scan])
def test_scan_peers_reproduce_emojax_effects(ctx, bench):
    _check_scan(bench(ctx))


def test_the_prefix_peer_declines_edits_at_every_position(ctx):
    _check_scan(bench_scans.bench_head_scan_all_positions(ctx), skipped=("hf_prefix",), all_positions=True)


def test_generation_peers_produce_emojax_steered_tokens(ctx):
    tokens, mask = bench_generate.bench_prompts(ctx)
    iv = bench_generate.circuit_style_edits(ctx.config, tokens.shape[0], scale=1.0)
    ours = np.asarray(bench_generate.emojax_generation(ctx, tokens, mask, iv)())
    plain = np.asarray(bench_generate.emojax_generation(ctx, tokens, mask, None)())
    assert (ours != plain).any()  # the edits change the tokens, so equal tokens show the peers steer alike
    peers = bench_generate.steered_peers(ctx, tokens, mask, iv)
    assert set(peers) == set(GENERATION_PEERS)
    for name, (run, _) in peers.items():
        np.testing.assert_array_equal(run(), ours, err_msg=name)


def test_generate_steered_reports_every_generation_peer(ctx):
    result = bench_generate.bench_generate_steered(ctx)
    assert set(result["peers"]) == set(GENERATION_PEERS)
    assert all(peer["seconds"] > 0 and "same_tokens" in peer for peer in result["peers"].values())
