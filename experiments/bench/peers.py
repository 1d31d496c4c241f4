"""The tools a researcher would use instead of emojax, by name, and how their scans are timed.

    --peers=all                      every peer
    --peers=hf_batched,nnsight       a comma list
    --peers=none                     emojax alone

Scan peers (`ScanPeer`): each gets the prompt batch, the read-out and a list of variant edits, and
returns the variants' effects. Its time for the whole scan is its setup (clean forward or prefix
capture) plus its time on a sample of the variants scaled by `cost` (variants for a full forward
per variant; variant-layers for the one-token suffix that starts at the edited layer).

Generation peers are the `generate_steered` baselines: a function (ctx, tokens, mask, edits) ->
a call returning the new tokens [B, N].
"""
from __future__ import annotations

import abc
import importlib
import time
from typing import Any, Callable, Sequence

import numpy as np

from experiments.bench.common import BenchContext, rss_during
from experiments.bench.peer_common import Edit, ScanJob, chunks

SCAN_PEERS: dict[str, str] = {
    "hf_hooks": "experiments.bench.peer_hf_batched:HFHooksPeer",
    "hf_batched": "experiments.bench.peer_hf_batched:HFBatchedPeer",
    "hf_prefix": "experiments.bench.peer_hf_prefix:HFPrefixPeer",
    "nnsight": "experiments.bench.peer_nnsight:NNsightScanPeer",
    "transformer_lens": "experiments.bench.peer_transformer_lens:TransformerLensScanPeer",
}
GENERATION_PEERS: dict[str, str] = {
    "hf_hooks": "experiments.bench.peer_hf_generate:hf_steered_generation",
    "nnsight": "experiments.bench.peer_nnsight:nnsight_steered_generation",
}
PEER_NAMES = tuple(dict.fromkeys([*SCAN_PEERS, *GENERATION_PEERS]))


def parse_peers(spec: str) -> tuple[str, ...]:
    """'all', 'none' or a comma list of PEER_NAMES."""
    spec = spec.strip()
    if spec == "all":
        return PEER_NAMES
    if spec in ("", "none"):
        return ()
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in PEER_NAMES]
    if unknown:
        raise ValueError(f"--peers: unknown peer(s) {unknown}; known: {list(PEER_NAMES)}, 'all' or 'none'")
    return names


# The packages of the `bench` extra each peer needs beyond torch and transformers.
PEER_PACKAGES = {"nnsight": "nnsight", "transformer_lens": "transformer_lens"}


def missing_packages(names: Sequence[str]) -> dict[str, str]:
    """{peer: package} for the peers among `names` whose package is not installed."""
    import importlib.util

    return {n: PEER_PACKAGES[n] for n in names if n in PEER_PACKAGES and importlib.util.find_spec(PEER_PACKAGES[n]) is None}


def load_peer(path: str) -> Any:
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


class ScanPeer(abc.ABC):
    """One way of running a scan outside emojax, on the same weights."""

    name: str
    batching: str  # "one": a forward per variant; "full": variants in the batch; "suffix": one-token rows

    def __init__(self, ctx: BenchContext, chunk: int):
        self.ctx = ctx
        self.chunk = chunk  # variants per forward

    @abc.abstractmethod
    def setup(self, job: ScanJob) -> None:
        """What the scan does once before its variants (the clean forward, or the prefix capture)."""

    @abc.abstractmethod
    def effects(self, edits: Sequence[Edit]) -> np.ndarray:
        """Effects [len(edits), B] of the variants, in order (after `setup`)."""

    @abc.abstractmethod
    def description(self) -> str: ...

    def unsupported(self, edit: Edit) -> str | None:
        """Why this peer cannot run `edit` (None when it can)."""
        return None

    def cost(self, edits: Sequence[Edit]) -> float:
        """Relative cost of running `edits`: one full forward each."""
        return float(len(edits))

    def sample(self, edits: Sequence[Edit], k: int) -> list[int]:
        """Indices of the variants timed: k (at least one chunk) spread over all of them."""
        return spread(len(edits), max(k, self.chunk))


class FullForwardPeer(ScanPeer):
    """A peer whose variants run as full forwards of the prompt batch, `chunk` variants per forward:
    an effect is a variant's scores minus those of the clean forward."""

    job: ScanJob
    clean: np.ndarray

    @abc.abstractmethod
    def _scores(self, edits: Sequence[Edit]) -> np.ndarray:
        """Scores [max(len(edits), 1), B] of one forward; no edits is the clean forward."""

    def setup(self, job: ScanJob) -> None:
        self.job = job
        self.clean = self._scores([])[0]

    def effects(self, edits: Sequence[Edit]) -> np.ndarray:
        return np.concatenate([self._scores(chunk) - self.clean for chunk in chunks(edits, self.chunk)])


def spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))


def scan_peers(ctx: BenchContext, names: Sequence[str], job: ScanJob,
               edits: Sequence[Edit]) -> tuple[dict[str, ScanPeer], dict[str, str]]:
    """The scan peers among `names` that can run these edits, and why the others cannot."""
    peers, skipped = {}, {}
    rows = {"full": ctx.sizes.peer_batch_rows, "suffix": ctx.sizes.prefix_batch_rows}
    for name in names:
        if name not in SCAN_PEERS:
            continue
        cls = load_peer(SCAN_PEERS[name])
        chunk = 1 if cls.batching == "one" else max(1, rows[cls.batching] // job.tokens.shape[0])
        peer = cls(ctx, chunk)
        reason = peer.unsupported(edits[0])
        if reason is None:
            peers[name] = peer
        else:
            skipped[name] = reason
    return peers, skipped


def time_scan(ctx: BenchContext, emojax_run: Callable[[], Any], emojax_effects: Callable[[Any], np.ndarray],
              job: ScanJob, edits: Sequence[Edit], repeats: int,
              candidates: Sequence[int] | None = None) -> tuple[list[float], Any, dict[str, Any],
                                                                dict[str, dict[str, Any]]]:
    """Run emojax's scan and every peer's sampled scan (`ctx.peers`) in turns, `repeats` times,
    after an untimed warm-up of each peer (its setup and one variant; emojax compiles before).

    `edits` are all the scan's variants; peers sample theirs from `candidates` (default: all),
    the variants whose emojax effects `emojax_effects(out)` [len(edits), B] holds. Returns
    (emojax run times, emojax's last output, emojax's memory, {peer: figures}); a peer's `seconds` is its setup
    plus its sample's time scaled by cost(edits) / cost(sample), and `max_abs_diff` compares its
    sampled effects with emojax's; `peak_rss_mb` is the process's peak resident memory during its
    last run (all models loaded, so compare it with `rss_before_mb`)."""
    peers, skipped = scan_peers(ctx, ctx.peers, job, edits)
    candidates = list(range(len(edits))) if candidates is None else list(candidates)
    pool = [edits[i] for i in candidates]
    picked = {n: [candidates[j] for j in p.sample(pool, ctx.sizes.peer_sample)] for n, p in peers.items()}
    for name, peer in peers.items():  # warm-up: the setup and one variant, untimed
        peer.setup(job)
        peer.effects([edits[picked[name][0]]])
    emojax_runs, out = [], None
    parts: dict[str, dict[str, list[float]]] = {n: {"setup": [], "sample": []} for n in peers}
    rss: dict[str, dict[str, float | None]] = {}
    last: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        start = time.perf_counter()
        out, emojax_rss = rss_during(emojax_run)
        emojax_runs.append(time.perf_counter() - start)
        for name, peer in peers.items():
            times: list[float] = [time.perf_counter()]

            def run_peer() -> np.ndarray:
                peer.setup(job)
                times.append(time.perf_counter())
                effects = peer.effects([edits[i] for i in picked[name]])
                times.append(time.perf_counter())
                return effects

            last[name], rss[name] = rss_during(run_peer)
            parts[name]["setup"].append(times[1] - times[0])
            parts[name]["sample"].append(times[2] - times[1])
    ours = emojax_effects(out)
    figures: dict[str, dict[str, Any]] = {}
    for name, peer in peers.items():
        sampled = [edits[i] for i in picked[name]]
        setup_s, sample_s = float(np.median(parts[name]["setup"])), float(np.median(parts[name]["sample"]))
        figures[name] = {
            "seconds": setup_s + sample_s * peer.cost(edits) / peer.cost(sampled),
            "max_abs_diff": float(np.abs(ours[picked[name]] - last[name]).max()),
            "setup_s": setup_s, "sample_s": sample_s, "sampled": len(sampled),
            "extrapolated": len(sampled) < len(edits), "chunk_variants": peer.chunk, "batching": peer.batching,
            **rss[name], "description": peer.description(),
        }
    for name, reason in skipped.items():
        figures[name] = {"seconds": None, "max_abs_diff": None, "skipped": reason}
    return emojax_runs, out, {f"emojax_{k}": v for k, v in emojax_rss.items()}, figures
