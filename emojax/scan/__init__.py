"""Fast exact scans over components: heads, neurons and sublayers (design.md §4).

Run the prompts once (`capture_prefix`), then every variant is either
- closed form (same-layer head score, analytic neuron contributions),
- a one-token suffix pass from the edited sublayer upward, for edits and read-outs at t* alone,
- a recompute from the edited layer upward, for edits at every position,
- or a first-order gradient estimate (attribution patching, for triage).
`emojax.scan.brute` holds the one-forward-per-variant definitions they are tested against.

Shapes: B prompts, L layers, H heads, F neurons, D model width, R read-out directions per row.
Read-outs are <h_final[t*], readout> with readout [D], [B, D] or [B, R, D].
"""
from emojax.scan.ablation import group_mean_replacement, mean_replacement, resample_replacement
from emojax.scan.attribution import Attribution, attribution_scores
from emojax.scan.heads import (causal_head_scan, head_ablation_same_layer, head_edit_scores,
                               head_set_ablation_same_layer)
from emojax.scan.neurons import (causal_neuron_scan, neuron_contributions, neuron_edit_scores, neuron_stats,
                                 neuron_write_alignment)
from emojax.scan.prefix import Prefix, capture_prefix
from emojax.scan.recompute import recompute_scores
from emojax.scan.sublayers import Influence, sublayer_influence
from emojax.scan.suffix import ScanResult, clean_scores, suffix_intervention_scores, suffix_scores

__all__ = [
    "Attribution", "Influence", "Prefix", "ScanResult", "attribution_scores", "capture_prefix",
    "causal_head_scan", "causal_neuron_scan", "clean_scores", "group_mean_replacement",
    "head_ablation_same_layer", "head_edit_scores", "head_set_ablation_same_layer", "mean_replacement",
    "neuron_contributions", "neuron_edit_scores", "neuron_stats", "neuron_write_alignment",
    "recompute_scores", "resample_replacement", "sublayer_influence", "suffix_intervention_scores",
    "suffix_scores",
]
