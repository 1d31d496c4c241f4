"""Circuit-modulation variants tuned on the TRAIN split: what, if anything, moves each emotion.

A variant changes one choice of S6d-S7 and goes through the one tuning protocol of
`emojax.stages.tuning` (lambda per emotion, the preset's train groups, fluent accuracy, `SearchRule`
with at most 3 extensions, around lambda 1 in steps of 2 unless the variant says otherwise); every
variant sees the same train items. `VARIANTS` lists them:

    default                the run's own circuits (budget, split, ranking and reference layers of the run)
    budget_x0.5/x2/x4      both kinds' budgets scaled (the per-layer minima kept; the caps clip)
    neurons_only/heads_only  one kind's budget set to 0 (neurons only on a grid around lambda 4)
    ratio_auto             the budget split by positive influence share (D9)
    causal_1, causal_4     members ranked by the exact causal scans of 1 or 4 prompts per emotion
    ref_middle, ref_last   the per-layer allocation from sublayer influence read out along v_ref of
                           other reference layers (the paper's 11-15 and 23-27, mapped by depth)
    steer_0.25, steer_0.5  the circuit plus steering at that fraction of the tuned steering alpha
    lambda_high            the run's circuits on a grid around lambda 16: an emotion whose curve is 0
                           everywhere never extends the default grid, so higher doses are tried here
    lambda_fine            the run's circuits on a grid around 4 in steps of sqrt 2, between the
                           default grid's points

Stages: `variant_<name>` (a tuning stage with its sweep.json), `variants_train` (the table of every
variant tuned in the run), `variants_test_<rule>` (what a rule below chose, on the test split, with
Wilson intervals and paired tests against the run's steering and circuit modulation). The pipeline
runs the per-emotion rule over its preset's candidates (`Preset.variants`) as `variant_choice_train`
(the table of those candidates only) and `variant_choice_test`.

Choice rules, fixed before any variant ran, train figures only:
    one variant   the variant with the highest overall fluent accuracy at its best single lambda
                  (ties: `default`, then the order of VARIANTS);
    per emotion   each emotion takes the (variant, lambda) with its highest fluent accuracy; ties go
                  to `default` at the best lambda of its overall curve, then to the order of VARIANTS
                  at each variant's own choice for that emotion.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from emojax.circuit import Budget, Circuit
from emojax.data import EMOTIONS, Item, items as all_items
from emojax.evaluation.accuracy import accuracy_tables
from emojax.evaluation.significance import cell_intervals, fraction, paired_test
from emojax.method.directions import reference_direction
from emojax.method.hparams import INFLUENCE_ALPHAS, map_range
from emojax.runs import InputError, read_json, read_jsonl, write_json, write_text
from emojax.runs.manifest import finite_jsonable
from emojax.runs.stage_record import digest, finished_summary, mark_finished
from emojax.stages import causal, circuit_stage, modulate, steer, sublayer, tuning, upstream
from emojax.stages.context import StageContext
from emojax.stages.judged import write_judged_outputs

TRAIN_STAGE = "variants_train"
TEST_STAGE = "variants_test"
RULE = tuning.SearchRule()   # the full preset's grid: reference 1, ratio 2, at most 3 extensions
RULES = ("one_variant", "per_emotion")
PIPELINE_TRAIN_STAGE = "variant_choice_train"
PIPELINE_TEST_STAGE = "variant_choice_test"
PIPELINE_RULE = "per_emotion"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One change to the run's circuit modulation (the defaults change nothing)."""

    name: str
    what: str
    neuron_budget: float = 1.0          # times the run's neuron budget
    head_budget: float = 1.0            # times the run's head budget
    ratio_mode: str | None = None       # None: the run's
    ranking: str = "analytic"
    causal_prompts: int = 0             # > 0: the causal ranking from scans of this many prompts per emotion
    ref_layers: tuple[int, int] | None = None   # paper layers (of 28), mapped by depth; None: the run's
    steer_fraction: float = 0.0         # steering at this fraction of the tuned alpha, on top of the circuit
    reference: float = 1.0              # the lambda grid's reference dose
    ratio: float = RULE.ratio           # and its ratio

    @property
    def stage(self) -> str:
        return f"variant_{self.name}"

    @property
    def changes_circuits(self) -> bool:
        return (self.neuron_budget, self.head_budget, self.ratio_mode, self.ranking, self.ref_layers) != \
            (1.0, 1.0, None, "analytic", None)

    def identity(self) -> dict[str, Any]:
        """The variant as its stamps record it: the grid fields only where they differ from the
        default grid (so runs tuned before those fields existed resume)."""
        record = dataclasses.asdict(self)
        for name, default in (("reference", 1.0), ("ratio", RULE.ratio)):
            if record[name] == default:
                del record[name]
        return record


VARIANTS = (
    Variant("default", "the run's circuits"),
    Variant("budget_x0.5", "both budgets x0.5", neuron_budget=0.5, head_budget=0.5),
    Variant("budget_x2", "both budgets x2", neuron_budget=2.0, head_budget=2.0),
    Variant("budget_x4", "both budgets x4", neuron_budget=4.0, head_budget=4.0),
    # Around 4, the full circuit's best dose: on the default grid the neurons alone score 0 at 0.5-2,
    # and an all-zero curve is never extended.
    Variant("neurons_only", "neurons only (head budget 0), lambda grid around 4", head_budget=0.0, reference=4.0),
    Variant("heads_only", "heads only (neuron budget 0)", neuron_budget=0.0),
    Variant("ratio_auto", "budget split by positive influence share", ratio_mode="auto"),
    Variant("causal_1", "members by the causal scans, 1 prompt per emotion", ranking="causal", causal_prompts=1),
    Variant("causal_4", "members by the causal scans, 4 prompts per emotion", ranking="causal", causal_prompts=4),
    Variant("ref_middle", "allocation read out at reference layers 11-15 (paper)", ref_layers=(11, 15)),
    Variant("ref_last", "allocation read out at reference layers 23-27 (paper)", ref_layers=(23, 27)),
    Variant("steer_0.25", "circuit + steering at 0.25 x the tuned alpha", steer_fraction=0.25),
    Variant("steer_0.5", "circuit + steering at 0.5 x the tuned alpha", steer_fraction=0.5),
    Variant("lambda_high", "the run's circuits, lambda grid around 16", reference=16.0),
    Variant("lambda_fine", "the run's circuits, lambda grid around 4 in steps of sqrt 2", reference=4.0,
            ratio=2 ** 0.5),
)
BY_NAME = {v.name: v for v in VARIANTS}


def select(names: Sequence[str]) -> list[Variant]:
    """The variants named (all of them when empty), in the order of VARIANTS."""
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        raise InputError(f"unknown variant(s) {', '.join(unknown)}; expected some of {', '.join(BY_NAME)}")
    return [v for v in VARIANTS if not names or v.name in names]


def scaled_budget(budget: Budget, neurons: float, heads: float) -> Budget:
    """The budget with each kind scaled; a kind scaled to 0 has no per-layer minimum either."""
    return Budget(neurons=int(round(budget.neurons * neurons)), heads=int(round(budget.heads * heads)),
                  min_neurons=budget.min_neurons if neurons > 0 else 0,
                  min_heads=budget.min_heads if heads > 0 else 0, cap_ratio=budget.cap_ratio)


def _influence(ctx: StageContext, variant: Variant) -> np.ndarray:
    """Mean-over-alpha influence [6, 2, L]: the run's, or read out along v_ref of other layers."""
    if variant.ref_layers is None:
        return upstream.influence(ctx)
    layers = map_range(*variant.ref_layers, ctx.config.n_layers)
    geometry = dict(upstream.directions(ctx))
    geometry["v_ref"] = reference_direction(geometry["dirs_attn"], geometry["dirs_mlp"], layers)
    stamp = {**sublayer.fingerprint(ctx, INFLUENCE_ALPHAS), "ref_layers": [layers.start, layers.stop - 1]}
    stats = sublayer.influence_scan(ctx, geometry, ctx.run.stage(variant.stage), stamp, INFLUENCE_ALPHAS)
    return stats["influence"].mean(axis=-1)


def _scores(ctx: StageContext, variant: Variant) -> tuple[np.ndarray, np.ndarray]:
    """(neuron [6, L, F], head [6, L, H]) ranking scores of the variant."""
    if variant.ranking == "analytic":
        return circuit_stage.ranking_scores(ctx, "analytic")
    layers = tuple(range(ctx.config.n_layers))
    if _run_scanned(ctx, variant.causal_prompts, layers):
        return upstream.causal_rankings(ctx)
    stamp = causal.fingerprint(ctx, variant.causal_prompts, layers)
    means, _ = causal.scan_means(ctx, variant.causal_prompts, layers, ctx.run.stage(variant.stage), stamp)
    return means["neuron_causal"], means["head_causal"]


def _run_scanned(ctx: StageContext, prompts: int, layers: Sequence[int]) -> bool:
    """Whether the run's own causal stage scanned every layer with `prompts` prompts per emotion (its
    scores are then the variant's, without scanning again)."""
    summary = upstream.stage_summary(ctx, causal.STAGE)
    return bool(summary) and summary.get("layers") == list(layers) and \
        set(summary.get("prompts", {}).values()) == {prompts}


def variant_circuits(ctx: StageContext, variant: Variant) -> dict[str, Circuit]:
    """The six circuits of the variant: the run's circuit stage when it changes none of their choices;
    otherwise built by S6e with the run's budget rule, split and allocation except for what it changes."""
    if not variant.changes_circuits:
        return upstream.circuits(ctx)
    if ctx.settings.circuit_ranking != "analytic":
        raise InputError(f"variant {variant.name} changes the analytic circuits, but this run ranks members by "
                         f"{ctx.settings.circuit_ranking}; run the variants on a run with --circuit_ranking=analytic")
    budget = scaled_budget(circuit_stage.budget_for(ctx.config, ctx.settings.budget), variant.neuron_budget,
                           variant.head_budget)
    built = circuit_stage.build_all(_influence(ctx, variant), *_scores(ctx, variant), budget,
                                    variant.ratio_mode or ctx.settings.ratio_mode)
    return {emotion: circuit for emotion, (circuit, _) in built.items()}


def tuned_alpha(ctx: StageContext, needed: bool = True) -> float:
    """The one steering alpha the run's tuning on train chose (0 when it did not run and is not needed)."""
    summary = upstream.stage_summary(ctx, steer.SWEEP_STAGE)
    if summary is None and needed:
        raise InputError(f"{ctx.run.path / steer.SWEEP_STAGE}: the steering variants need the run's steering "
                         "tuning (run the pipeline with the sweeps on)")
    return 0.0 if summary is None else float(summary["best"])


def steering_rows(ctx: StageContext, dirs_mlp: np.ndarray, items: Sequence[Item], alphas: np.ndarray):
    """item indices -> resid_add_rms [L, B, 2, D] of the run's steering along dirs_mlp [6, L, D] at
    alphas[i] (0: none)."""
    emotion = np.array([EMOTIONS.index(i.emotion) for i in items])
    layers = list(ctx.hparams.steer_layers)
    return lambda rows: np.asarray(steer.steering_intervention(ctx.config, dirs_mlp, emotion[rows], layers,
                                                               alphas[rows]).resid_add_rms)


def _stamp(ctx: StageContext, stage: str, records: Sequence[Any], circuits: Mapping[str, Circuit],
           extra: Mapping[str, Any]) -> dict[str, Any]:
    base = modulate.fingerprint(ctx, stage, records, modulate.emotion_scales(1.0, ctx.settings.official_scales))
    return {**base, "circuits": digest(modulate.circuit_members(circuits)), **extra}


def tune_variant(ctx: StageContext, variant: Variant) -> dict[str, Any]:
    """The tuning protocol for lambda (per emotion) with the variant's circuits, on the train groups."""
    per_emotion = dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, per_emotion_dose=True))
    chosen = tuning.spread_groups(ctx.train, ctx.preset.tune_groups)
    records = tuple(dict.fromkeys(g.record for g in chosen))
    circuits, geometry = variant_circuits(ctx, variant), upstream.directions(ctx)
    alpha = variant.steer_fraction * tuned_alpha(ctx) if variant.steer_fraction else 0.0
    stamp = _stamp(ctx, variant.stage, records, circuits,
                   {"groups": [g.key for g in chosen], "variant": variant.identity(), "steer_alpha": alpha})

    same_as_run = not variant.changes_circuits and not alpha
    train_items = [i for g in chosen for i in g.items]   # the order tuning.run_tuning generates them in
    # Read once, and only when a dose is to be generated (a finished stage reads nothing).
    sweep_replies = functools.cache(lambda: _run_sweep_replies(ctx, stamp, train_items) if same_as_run else {})

    def generate(directory: Path, items: Sequence[Item], dose_index: np.ndarray, doses: Sequence[float],
                 job: str) -> list[dict[str, Any]]:
        reused = sweep_replies()
        if all(d in reused for d in doses):
            return [{**r, "meta": {**r["meta"], "variant": variant.name, "steer_alpha": alpha,
                                   "reused_from": modulate.SWEEP_STAGE}} for d in doses for r in reused[d]]
        scale_sets = [modulate.emotion_scales(d, ctx.settings.official_scales) for d in doses]
        edits = modulate.stacked_edits([circuits] * len(doses), scale_sets, geometry, ctx.config)
        steering = steering_rows(ctx, geometry["dirs_mlp"], items, np.full(len(items), alpha, np.float32)) \
            if alpha else None
        return modulate.modulated_generation(ctx, directory, items, edits, dose_index,
                                             {**stamp, "scales": list(doses)}, job,
                                             {"variant": variant.name, "steer_alpha": alpha}, steering)[0]

    method = tuning.Method(variant.stage, f"circuit ({variant.name})", "lambda", variant.reference, generate)
    rule = dataclasses.replace(RULE, ratio=variant.ratio)
    summary = tuning.run_tuning(per_emotion, method, stamp, rule, chosen)
    return {**summary, "steer_alpha": alpha,
            "sizes": {e: [len(c.neuron_set()), len(c.head_set())] for e, c in circuits.items()}}


# What the run's lambda tuning shares with a variant that keeps its circuits: the same replies.
_SAME_REPLIES = ("dataset", "model", "decoding", "judge", "date", "batch_size", "scales", "circuits", "directions",
                 "groups")


def _run_sweep_replies(ctx: StageContext, stamp: Mapping[str, Any], items: Sequence[Item]
                       ) -> dict[float, list[dict[str, Any]]]:
    """{lambda: judged replies} of the run's own lambda tuning, when it finished with the same circuits, train
    items, decoding and judge as `stamp`: a variant that keeps the run's circuits would generate the same
    replies at those doses, so they are read, not generated again."""
    path = ctx.run.path / modulate.SWEEP_STAGE / "done.json"
    if not path.is_file():
        return {}
    theirs, mine = read_json(path)["fingerprint"], finite_jsonable(stamp, f"stage {stamp['stage']} fingerprint")
    if any(theirs.get(k) != mine.get(k) for k in _SAME_REPLIES):
        return {}
    keys, found = [i.key for i in items], {}
    for records_path in sorted((ctx.run.path / modulate.SWEEP_STAGE).glob("lambda_*/records.jsonl")):
        records = read_jsonl(records_path)
        if [r["key"] for r in records] == keys:
            found[float(records[0]["meta"]["lambda"])] = records
    return found


# ---------------------------------------------------------------------------------------------
# The table and the choice


def _curve(summary: Mapping[str, Any], name: str) -> dict[float, float]:
    values = summary["curves"]["fluent_accuracy"][name]
    return {float(d): (0.0 if v is None else float(v)) for d, v in zip(summary["grid"], values)}


def table_rows(tuned: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant: its best single lambda and overall train figure, and per emotion its own
    best lambda and train figure."""
    rows = []
    for name, summary in tuned.items():
        overall = _curve(summary, "overall")
        row = {"variant": name, "what": BY_NAME[name].what, "grid": summary["grid"], "lambda": summary["best"],
               "overall": overall[summary["best"]], "bracketed": summary["bracketed"],
               "sizes": summary["sizes"], "steer_alpha": summary["steer_alpha"]}
        for e in EMOTIONS:
            best = summary["per_emotion_best"][e]
            row[e] = {"lambda": best, "fluent_accuracy": _curve(summary, e)[best]}
        rows.append(row)
    return rows


def choose_one(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The one-variant rule: {emotion: {variant, lambda}} of the best overall variant at its lambda."""
    top = max(r["overall"] for r in rows)
    winner = next(r for r in _tie_order(rows) if r["overall"] == top)
    return {e: {"variant": winner["variant"], "lambda": winner["lambda"]} for e in EMOTIONS}


def choose_per_emotion(rows: Sequence[Mapping[str, Any]], tuned: Mapping[str, Mapping[str, Any]]
                       ) -> dict[str, Any]:
    """The per-emotion rule: each emotion's best (variant, lambda) over every dose each variant tried."""
    default_lambda = next((r["lambda"] for r in rows if r["variant"] == "default"), None)
    chosen = {}
    for e in EMOTIONS:
        top = max(max(_curve(tuned[r["variant"]], e).values()) for r in rows)
        if default_lambda is not None and _curve(tuned["default"], e)[default_lambda] == top:
            chosen[e] = {"variant": "default", "lambda": default_lambda}
            continue
        # A variant's own per-emotion choice always sits at its curve's maximum.
        row = next(r for r in _tie_order(rows) if max(_curve(tuned[r["variant"]], e).values()) == top)
        chosen[e] = {"variant": row["variant"], "lambda": row[e]["lambda"]}
    return chosen


def _tie_order(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows in the order of VARIANTS, whose first is `default`."""
    order = [v.name for v in VARIANTS]
    return sorted(rows, key=lambda r: order.index(r["variant"]))


def markdown(rows: Sequence[Mapping[str, Any]], items_per_emotion: int) -> str:
    head = "| variant | overall (lambda) | " + " | ".join(EMOTIONS) + " |"
    lines = [f"Train-split fluent accuracy, {items_per_emotion} items per emotion and dose; a cell is the "
             "best over the lambdas tried (that lambda in brackets).", "", head,
             "|" + "---|" * (len(EMOTIONS) + 2)]
    for r in rows:
        cells = [f"{100 * r[e]['fluent_accuracy']:.1f} ({r[e]['lambda']:g})" for e in EMOTIONS]
        lines.append(f"| {r['variant']}: {r['what']} | {100 * r['overall']:.1f} ({r['lambda']:g}) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_train(ctx: StageContext, names: Sequence[str] = (), stage: str = TRAIN_STAGE,
              every_tuned: bool = True) -> dict[str, Any]:
    """Tune every selected variant on train; write, as `stage`, the table of the selected variants (and,
    with `every_tuned`, of every other variant tuned so far in this run) and both rules' choices among them."""
    chosen = select(names)
    tuned = {v.name: tune_variant(ctx, v) for v in VARIANTS
             if v in chosen or (every_tuned and ctx.run.is_done(v.stage))}
    stamp = {"variants": {name: digest(summary) for name, summary in tuned.items()}}
    done = finished_summary(ctx.run, stage, stamp)
    if done is not None:
        return done
    rows = table_rows(tuned)
    out = ctx.run.stage(stage)
    items_per_emotion = next(iter(tuned.values()))["items"] // len(EMOTIONS)
    summary = {"stage": stage, "split": "train", "items_per_emotion": items_per_emotion,
               "rule": RULE.describe(), "rows": rows, "one_variant": choose_one(rows),
               "per_emotion": choose_per_emotion(rows, tuned)}
    write_json(out / "variants.json", summary)
    write_text(out / "variants.md", markdown(rows, items_per_emotion))
    mark_finished(ctx.run, stage, stamp, summary)
    return summary


# ---------------------------------------------------------------------------------------------
# The test split, for what a rule chose


def run_test(ctx: StageContext, rule: str, table: str = TRAIN_STAGE, stage: str | None = None) -> dict[str, Any]:
    """The configuration `rule` ("one_variant" or "per_emotion") chose on train in the table stage
    `table`, on every test item, as `stage` (default variants_test_<rule>)."""
    if rule not in RULES:
        raise InputError(f"variant rule {rule!r}; expected one of {', '.join(RULES)}")
    choice = _train_table(ctx, table)[rule]
    names = sorted({c["variant"] for c in choice.values()}, key=[v.name for v in VARIANTS].index)
    circuits = {n: variant_circuits(ctx, BY_NAME[n]) for n in names}
    stage = stage or f"{TEST_STAGE}_{rule}"
    stamp = {**modulate.fingerprint(ctx, stage, ctx.test, modulate.emotion_scales(1.0, ctx.settings.official_scales)),
             "choice": choice, "steer_alpha": tuned_alpha(ctx, any(BY_NAME[n].steer_fraction for n in names)),
             "variant_circuits": digest({n: modulate.circuit_members(cs) for n, cs in circuits.items()})}
    run_circuit = _records(ctx, modulate.STAGE)
    reused = _run_circuit_replies(ctx, choice, run_circuit)
    stamp["reused"] = {"emotions": sorted({r["emotion"] for r in reused.values()}),
                       "records": digest(list(reused.values()))}
    done = finished_summary(ctx.run, stage, stamp)
    if done is not None:
        return done
    out = ctx.run.stage(stage)
    meta = {"rule": rule, "choice": choice}
    every_item = all_items(ctx.test)
    items = [i for i in every_item if i.key not in reused]
    generated: list[dict[str, Any]] = []
    if items:
        # One stacked variant per chosen variant name; lambda_e from the choice (anger keeps its factor).
        scale_sets = [modulate.emotion_scales(np.asarray([choice[e]["lambda"] if choice[e]["variant"] == n else 1.0
                                                          for e in EMOTIONS]), ctx.settings.official_scales)
                      for n in names]
        geometry = upstream.directions(ctx)
        edits = modulate.stacked_edits([circuits[n] for n in names], scale_sets, geometry, ctx.config)
        index = np.asarray([names.index(choice[i.emotion]["variant"]) for i in items])
        alphas = np.asarray([BY_NAME[choice[i.emotion]["variant"]].steer_fraction * stamp["steer_alpha"]
                             for i in items], np.float32)
        steering = steering_rows(ctx, geometry["dirs_mlp"], items, alphas) if alphas.any() else None
        generated = modulate.modulated_generation(ctx, out, items, edits, index, stamp, "generate", meta, steering)[0]
    fresh = {r["key"]: r for r in generated}
    records = [fresh[i.key] if i.key in fresh else {**reused[i.key], "meta": {**reused[i.key]["meta"], **meta,
                                                                               "reused_from": modulate.STAGE}}
               for i in every_item]
    tables = accuracy_tables(records)
    write_judged_outputs(out, records, tables, f"Circuit variants chosen on train ({rule}), test split")
    summary = {"stage": stage, "rule": rule, "choice": choice, "items": len(records), "reused": len(reused),
               "fluent_accuracy": fraction(tables["overall"], "fluent_matched", stage),
               "interval": cell_intervals(tables["overall"], stage)["fluent_accuracy"],
               "per_emotion": {e: fraction(tables["per_emotion"][e], "fluent_matched", stage) for e in EMOTIONS},
               "paired": {"steer_test": paired_test(records, _records(ctx, "steer_test")),
                          modulate.STAGE: paired_test(records, run_circuit)}}
    mark_finished(ctx.run, stage, stamp, summary)
    return summary


def _run_circuit_replies(ctx: StageContext, choice: Mapping[str, Mapping[str, Any]],
                         run_circuit: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{item key: the run's circuit-modulation record} of the emotions whose choice is the run's own circuit
    at the lambda_e its test stage used: that reply is the chosen configuration's, so it is not generated again."""
    used = upstream.modulation_scales(ctx)
    wanted = modulate.emotion_scales(np.asarray([choice[e]["lambda"] for e in EMOTIONS]), ctx.settings.official_scales)
    same_dose = np.isclose(wanted, used, rtol=1e-6, atol=1e-6)
    same = {e for k, e in enumerate(EMOTIONS) if choice[e]["variant"] == "default" and same_dose[k]}
    return {r["key"]: dict(r) for r in run_circuit if r["emotion"] in same}


def _train_table(ctx: StageContext, table: str) -> dict[str, Any]:
    path = ctx.run.path / table / "variants.json"
    if not path.is_file():
        raise InputError(f"{path}: the variants have not been tuned on train yet (run with --split=train first)")
    return read_json(path)


def _records(ctx: StageContext, stage: str) -> list[dict[str, Any]]:
    path = ctx.run.path / stage / "records.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: stage {stage} has not run in this run directory")
    return read_jsonl(path)
