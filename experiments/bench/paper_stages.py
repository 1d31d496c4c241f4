"""Every compute stage of the method at one model shape, each as a planned, timeable job.

Each function takes the `PaperRun` (weights, prompts, the memory budget, what earlier stages left)
and returns a `StageJob`: its chunk plans (emojax.scan.memory_plan), its FLOPs, the call to time, a
cheaper call compiling the same programs, and the work units it does (for the projection, see
experiments/bench/paper_workload.py). Building a job only plans (it raises `BudgetTooSmall` before
anything runs, and reads no earlier stage's output), so a plan can be made without running. The
stages call the library and the stages' own pieces; only the inputs are synthetic (random tokens,
one group of the six emotions).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emojax import scan
from emojax.circuit.budget import transferred_budget
from emojax.circuit.build import build_circuit
from emojax.data import EMOTIONS
from emojax.generation.loop import generate_tokens
from emojax.method.directions import Groups
from emojax.method.hparams import INFLUENCE_ALPHAS, transferred
from emojax.model.config import ModelConfig
from emojax.scan import chunking
from emojax.scan.memory_plan import (F32, LIVE_COPIES, ChunkPlan, generation_row_bytes, held_weight_bytes,
                                     plan_chunk, plan_generation, prefix_bytes, sequence_bytes, token_bytes)
from emojax.stages import capture as capture_stage
from emojax.stages import directions_stage, modulate, steer, sublayer
from emojax.stages.judged import decoding_for
from experiments.bench.common import BenchContext, forward_flops
from experiments.bench.generate import generation_flops
from experiments.bench.peer_common import Edit
from experiments.bench.scan_flops import recompute_scan_flops, suffix_scan_flops

N_EMOTIONS = len(EMOTIONS)


@dataclasses.dataclass
class PaperRun:
    """One launcher run: the model, the synthetic inputs, the budget and the stages' outputs."""

    bench: BenchContext            # the weights and shape (and what the benchmarks' FLOP counts read)
    tokens: np.ndarray             # [N, T] prompts of the captured items (N a multiple of 6)
    budget: int                    # bytes the run may use, weights included
    scan_prompts: int              # prompts of the causal head and neuron scans
    scan_layers: tuple[int, ...]   # layers those scans run (every neuron/head of each)
    generate_batch: int
    new_tokens: int
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        return self.bench.config

    @property
    def params(self) -> Any:
        return self.bench.params

    @property
    def mask(self) -> np.ndarray:
        return np.ones(self.tokens.shape, bool)

    @property
    def emotion(self) -> np.ndarray:
        return np.arange(self.tokens.shape[0]) % N_EMOTIONS

    @property
    def weights(self) -> int:
        """The weights, and on a CPU in half precision the float32 copy every compiled call makes."""
        return held_weight_bytes(self.config, self.bench.dtype)

    def plan(self, stage: str, resident: int, row_bytes: int, wanted: int) -> ChunkPlan:
        return plan_chunk(stage, budget=self.budget, resident=self.weights + resident, row_bytes=row_bytes,
                          wanted=wanted)


class StageJob(NamedTuple):
    plans: dict[str, ChunkPlan]
    flop: int
    work: Callable[[], Any]                  # the timed call; its result goes to `keep`
    warmup: Callable[[], Any] | None         # compiles work's programs more cheaply (None: run work once more)
    units: float                             # work units of `work` (paper_workload.UNITS names them)
    keep: Callable[[Any], None] = lambda result: None


def _f32(x: Any) -> np.ndarray:
    return np.asarray(x, np.float32)


# --- prompt passes and host steps ---------------------------------------------------------------------

def capture(run: PaperRun) -> StageJob:
    """S2/S4/S5's fused last-token capture of the emotion prompts (emojax.stages.capture)."""
    c, (n, t) = run.config, run.tokens.shape
    plan = run.plan("capture", 0, sequence_bytes(c, t) + prefix_bytes(c, 1, t, run.bench.dtype), n)

    def work() -> dict[str, np.ndarray]:
        return chunking.map_chunks(lambda idx: capture_stage.capture_batch(run.params, run.tokens[idx],
                                                                           run.mask[idx], c), n, plan.rows, "capture")

    return StageJob({"prompts": plan}, forward_flops(c, n, t, logits="none"), work, None, n,
                    lambda acts: run.state.update(acts=acts))


def directions(run: PaperRun) -> StageJob:
    """S2/S5/S6a: directions, difference vectors, residual scales and v_ref from the capture (host)."""
    n = run.tokens.shape[0]
    groups = Groups(run.emotion, np.arange(n) // N_EMOTIONS)
    ref_layers = transferred(run.config).ref_layers
    return StageJob({}, 0, lambda: directions_stage.compute_vectors(run.state["acts"], groups, ref_layers), None, n,
                    lambda vectors: run.state.update(vectors=vectors))


def neuron_contributions(run: PaperRun) -> StageJob:
    """S4a: analytic neuron contributions and their per-emotion statistics (emojax.scan.neuron_stats)."""
    c, n = run.config, run.tokens.shape[0]
    stats = c.n_layers * c.d_ff * F32
    plan = run.plan("neuron contributions", (n + 5 * N_EMOTIONS) * stats, LIVE_COPIES * 5 * stats, n)
    work = lambda: scan.neuron_stats(run.params, run.state["acts"]["g"], run.emotion,
                                     run.state["vectors"]["dirs_mlp"], chunk=plan.rows)
    return StageJob({"items": plan}, 2 * N_EMOTIONS * c.n_layers * c.d_ff * c.d_model, work, None, n,
                    lambda stats_: run.state.update(neuron_scores=stats_["C_mean"]))


def head_scores(run: PaperRun) -> StageJob:
    """S4b: the closed-form same-layer head importance of every head, each emotion's items against
    its own directions (as emojax.stages.components.head_statistics)."""
    c, n = run.config, run.tokens.shape[0]
    row = LIVE_COPIES * F32 * 2 * c.n_layers * c.n_heads * c.d_model  # contributions and ablated states
    plan = run.plan("head scores", 0, row, n)

    def work() -> np.ndarray:
        acts, dirs = run.state["acts"], run.state["vectors"]["dirs_attn"]
        means = []
        for e in range(N_EMOTIONS):
            rows = np.flatnonzero(run.emotion == e)
            importance, _ = scan.head_ablation_same_layer(run.params, acts["z"][rows], acts["resid_mid"][rows],
                                                          dirs[e], config=c, chunk=plan.rows)
            means.append(importance.mean(axis=0))
        return np.stack(means)

    return StageJob({"items": plan}, 2 * n * c.n_layers * c.q_dim * c.d_model, work, None, n,
                    lambda means: run.state.update(head_scores=means))


# --- the exact scans -----------------------------------------------------------------------------------

def _layer_passes(config: ModelConfig, layers: Any) -> int:
    """Layers a scan variant at each of `layers` runs: l..L-1, or l+1..L-1 and the read-out."""
    return sum(config.n_layers - layer for layer in layers)


def _readout(run: PaperRun, prompts: int) -> np.ndarray:
    """<h_final[t*], v_ref,e> of each scanned prompt's emotion."""
    return _f32(run.state["vectors"]["v_ref"][run.emotion[:prompts]])


def head_scan(run: PaperRun) -> StageJob:
    """§14.2: every head of the scanned layers zeroed at every position (the S4b edit), recomputed
    from its layer, read at <h_final[t*], v_ref> (emojax.scan.causal_head_scan, as the causal stage)."""
    c, b, t = run.config, run.scan_prompts, run.tokens.shape[1]
    resident = prefix_bytes(c, b, t, run.bench.dtype, keep_sequence=True)
    plan = run.plan("head scan", resident, b * (sequence_bytes(c, t) + F32 * t * c.d_model), c.n_heads)

    def scan_layers(layers: Any) -> np.ndarray:
        prefix = scan.capture_prefix(run.params, run.tokens[:b], run.mask[:b], config=c, keep_sequence=True)
        return scan.causal_head_scan(run.params, prefix, _readout(run, b), config=c, positions="all", layers=layers,
                                     chunk=plan.rows).effect

    flop = recompute_scan_flops(c, [l for l in run.scan_layers for _ in range(c.n_heads)], b, t)
    return StageJob({"heads": plan}, flop, lambda: scan_layers(run.scan_layers), lambda: scan_layers([c.n_layers - 1]),
                    c.n_heads * b * _layer_passes(c, run.scan_layers))


def neuron_scan(run: PaperRun) -> StageJob:
    """§14.2: the exhaustive causal neuron scan, every neuron of the scanned layers zeroed at t*, as
    one-token suffix passes in planned chunks (emojax.scan.causal_neuron_scan)."""
    c, b, t = run.config, run.scan_prompts, run.tokens.shape[1]
    plan = run.plan("neuron scan", prefix_bytes(c, b, t, run.bench.dtype),
                    b * (token_bytes(c, t) + F32 * c.d_model), c.d_ff)

    def scan_layers(layers: Any) -> np.ndarray:
        prefix = scan.capture_prefix(run.params, run.tokens[:b], run.mask[:b], config=c)
        return scan.causal_neuron_scan(run.params, prefix, _readout(run, b), config=c, layers=layers, chunk=plan.rows).effect

    edits = [Edit(layer, "neuron_in", j, j + 1) for layer in run.scan_layers for j in range(c.d_ff)]
    return StageJob({"neurons": plan}, suffix_scan_flops(c, edits, b, t), lambda: scan_layers(run.scan_layers),
                    lambda: scan_layers([c.n_layers - 1]), c.d_ff * b * _layer_passes(c, run.scan_layers))


def sublayer_influence(run: PaperRun) -> StageJob:
    """S6d: every sublayer x alpha injected at t* for every captured item's prompt (the stage's
    directions, sigma and v_ref; emojax.scan.sublayer_influence)."""
    c, (b, t) = run.config, run.tokens.shape
    emotion = run.emotion
    plan = run.plan("sublayer influence", prefix_bytes(c, b, t, run.bench.dtype),
                    b * (token_bytes(c, t) + F32 * c.d_model), len(INFLUENCE_ALPHAS))

    def work() -> np.ndarray:
        v = run.state["vectors"]
        w = sublayer.local_directions(v["dirs_attn"], v["dirs_mlp"], v["v_ref"])
        sigma = np.stack([v["sigma_attn"], v["sigma_mlp"]]).astype(np.float32)
        prefix = scan.capture_prefix(run.params, run.tokens, run.mask, config=c)
        return scan.sublayer_influence(run.params, prefix, w[emotion], sigma, INFLUENCE_ALPHAS,
                                       _f32(v["v_ref"][emotion]), config=c, chunk=plan.rows).influence

    zero = np.zeros(c.d_model, np.float32)  # the FLOPs do not depend on the injected vector
    edits = [Edit(layer, site, vector=zero) for site in ("attn_out", "mlp_out") for layer in range(c.n_layers)
             for _ in INFLUENCE_ALPHAS]

    def keep(influence: np.ndarray) -> None:  # [2, L, A, B] -> per emotion, mean over alpha [6, 2, L]
        per_row = np.moveaxis(influence, -1, 0)
        run.state["influence"] = sublayer.aggregate(per_row, np.zeros(b), emotion)["influence"].mean(axis=-1)

    return StageJob({"alphas": plan}, suffix_scan_flops(c, edits, b, t), work, None, len(edits) * b, keep)


def circuits(run: PaperRun) -> StageJob:
    """S6: each emotion's global circuit from the influence and the S4 rankings (host)."""
    budget = transferred_budget(run.config)

    def work() -> dict[str, Any]:
        influence = run.state["influence"]
        return {e: build_circuit(e, influence[i, 0], influence[i, 1], run.state["neuron_scores"][i],
                                 run.state["head_scores"][i], budget)[0] for i, e in enumerate(EMOTIONS)}

    return StageJob({}, 0, work, None, N_EMOTIONS, lambda built: run.state.update(circuits=built))


# --- generation ------------------------------------------------------------------------------------------

RowEdits = Callable[[], Callable[[np.ndarray], Any]]  # built when the stage runs: emotion rows -> Intervention


def _generation(run: PaperRun, stage: str, condition: str, row_edits: RowEdits | None) -> StageJob:
    c, t, n_new, rows = run.config, run.tokens.shape[1], run.new_tokens, run.generate_batch
    tokens = np.resize(run.tokens, (rows, t))  # the captured prompts again, cycled to the batch
    emotion = np.arange(rows) % N_EMOTIONS
    dtype = run.bench.dtype
    plan, low_memory = plan_generation(stage, budget=run.budget, resident=run.weights, config=c, dtype=dtype,
                                       row_bytes=generation_row_bytes(c, t, n_new, dtype), wanted=rows)
    decoding = decoding_for(condition, n_new)
    cast = lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    def chunk(idx: np.ndarray, row_iv: Callable[[np.ndarray], Any] | None) -> Any:
        iv = None if row_iv is None else jax.tree_util.tree_map(lambda a: cast(jnp.asarray(a)), row_iv(emotion[idx]))
        return generate_tokens(run.params, jnp.asarray(tokens[idx]), jnp.ones((len(idx), t), bool), config=c,
                               max_new_tokens=n_new, min_new_tokens=n_new, iv=iv,
                               repetition_penalty=decoding.repetition_penalty,
                               no_repeat_ngram_size=decoding.no_repeat_ngram_size, low_memory=low_memory).tokens

    def work() -> np.ndarray:
        row_iv = None if row_edits is None else row_edits()
        return chunking.map_chunks(lambda idx: chunk(idx, row_iv), rows, plan.rows, stage)

    key = "rows, low_memory (no weight copy)" if low_memory else "rows"
    return StageJob({key: plan}, generation_flops(run.bench, rows, t), work, None, rows * n_new)


def generation_prompted(run: PaperRun) -> StageJob:
    """S1 (and the neutral baseline): greedy generation without intervention."""
    return _generation(run, "prompted generation", "prompting", None)


def generation_steered(run: PaperRun) -> StageJob:
    """S3: rms-scaled direction steering at the transferred layers and alpha, on P_last."""
    hp = transferred(run.config)

    def row_edits() -> Callable[[np.ndarray], Any]:
        dirs = run.state["vectors"]["dirs_mlp"]
        return lambda e: steer.steering_intervention(run.config, dirs, e, hp.steer_layers, hp.steer_alpha)

    return _generation(run, "steered generation", "steering", row_edits)


def generation_circuit(run: PaperRun) -> StageJob:
    """S7: circuit modulation, lambda_e * Delta_e on each emotion's circuit (neurons on P_last, heads on P_all)."""
    def row_edits() -> Callable[[np.ndarray], Any]:
        v = run.state["vectors"]
        edits = modulate.component_edits(run.state["circuits"], v["delta_mlp"], v["delta_attn"],
                                         modulate.emotion_scales(1.0, True), run.config)
        return lambda e: modulate.row_intervention(*edits, e, run.config)

    return _generation(run, "circuit generation", "circuit", row_edits)


STAGES: dict[str, Callable[[PaperRun], StageJob]] = {
    "capture": capture, "directions": directions, "neuron_contributions": neuron_contributions,
    "head_scores": head_scores, "head_scan": head_scan, "neuron_scan": neuron_scan,
    "sublayer_influence": sublayer_influence, "circuits": circuits, "generation_prompted": generation_prompted,
    "generation_steered": generation_steered, "generation_circuit": generation_circuit,
}
# What each stage reads from earlier ones (a stage whose input is missing is not run).
NEEDS = {"directions": "acts", "neuron_contributions": "vectors", "head_scores": "vectors", "head_scan": "vectors",
         "neuron_scan": "vectors", "sublayer_influence": "vectors", "generation_steered": "vectors",
         "circuits": ("influence", "neuron_scores", "head_scores"), "generation_circuit": "circuits"}
