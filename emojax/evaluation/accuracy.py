"""Emotion-expression accuracy tables of a judged stage (method.md §7), judged and fluent side by side.

Every judged stage (prompting, steering, circuit modulation, baselines) reports the fraction of texts
the judge matched to their target emotion, and the fraction that match AND are fluent (emojax.judge.fluency):
overall, per emotion, per valence and per emotion x valence, as percentages rounded to 2 decimals,
always with their counts and the number of judge failures (which count as non-matches, §4.3).

Records are the §3.3 dicts: `emotion`, `valence` and `judge: {match, reason, error, fluent, fluent_match}`.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from emojax.data import EMOTIONS, VALENCES

Cell = dict[str, Any]


class Verdict(NamedTuple):
    emotion: str
    valence: str
    match: int
    fluent: int
    fluent_match: int
    error: bool


def _percent(count: int, total: int) -> float | None:
    return round(100.0 * count / total, 2) if total else None


def cell(verdicts: Sequence[Verdict]) -> Cell:
    """{accuracy, matched, total, judge_errors, fluent, fluent_matched, fluent_accuracy}; percentages have 2
    decimals and are None when empty."""
    total = len(verdicts)
    matched = sum(v.match for v in verdicts)
    fluent_matched = sum(v.fluent_match for v in verdicts)
    return {"accuracy": _percent(matched, total), "matched": matched, "total": total,
            "judge_errors": sum(v.error for v in verdicts), "fluent": sum(v.fluent for v in verdicts),
            "fluent_matched": fluent_matched, "fluent_accuracy": _percent(fluent_matched, total)}


def _verdict(record: Mapping[str, Any], index: int) -> Verdict:
    name = record.get("key", "?") if isinstance(record, Mapping) else repr(record)
    try:
        emotion, valence, judge = record["emotion"], record["valence"], record["judge"]
        match, fluent, fluent_match = judge["match"], judge["fluent"], judge["fluent_match"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"record {index} ({name}): needs emotion, valence and judge.match, judge.fluent, "
                         f"judge.fluent_match ({err!r})") from None
    if emotion not in EMOTIONS or valence not in VALENCES:
        raise ValueError(f"record {index} ({name}): unknown emotion {emotion!r} or valence {valence!r}")
    for field, value in (("match", match), ("fluent", fluent), ("fluent_match", fluent_match)):
        if value not in (0, 1):
            raise ValueError(f"record {index} ({name}): judge.{field} must be 0 or 1, got {value!r}")
    if fluent_match != (match and fluent):
        raise ValueError(f"record {index} ({name}): judge.fluent_match={fluent_match} but match={match} and "
                         f"fluent={fluent}")
    return Verdict(emotion, valence, int(match), int(fluent), int(fluent_match), judge.get("error") is not None)


def accuracy_tables(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy overall, per emotion, per valence and per emotion x valence (canonical orders)."""
    rows = [_verdict(r, i) for i, r in enumerate(records)]

    def select(emotion: str | None = None, valence: str | None = None) -> Cell:
        return cell([v for v in rows if (emotion is None or v.emotion == emotion)
                     and (valence is None or v.valence == valence)])

    return {
        "overall": select(),
        "per_emotion": {e: select(emotion=e) for e in EMOTIONS},
        "per_valence": {v: select(valence=v) for v in VALENCES},
        "per_emotion_valence": {e: {v: select(e, v) for v in VALENCES} for e in EMOTIONS},
    }


def overall_fraction(tables: Mapping[str, Any]) -> float | None:
    """Overall accuracy as a fraction in [0, 1] (None when nothing was judged), for summary.json."""
    overall = tables["overall"]
    return overall["matched"] / overall["total"] if overall["total"] else None


def judged_text(c: Mapping[str, Any]) -> str:
    """`6.25 (9/144)`: judged accuracy with its counts ("—" when empty)."""
    return "—" if c["accuracy"] is None else f"{c['accuracy']:.2f} ({c['matched']}/{c['total']})"


def fluent_text(c: Mapping[str, Any]) -> str:
    """Fluent accuracy with its counts; "—" when empty or when the cell predates the fluency gate."""
    if c.get("fluent_accuracy") is None:
        return "—"
    return f"{c['fluent_accuracy']:.2f} ({c['fluent_matched']}/{c['total']})"


def accuracy_markdown(tables: Mapping[str, Any], title: str | None = None) -> str:
    """Two Markdown tables, judged and fluent accuracy side by side with their counts: overall / per emotion /
    per valence, then emotion x valence."""
    o = tables["overall"]
    head = ["overall"] + list(EMOTIONS) + list(VALENCES)
    cells = [o] + [tables["per_emotion"][e] for e in EMOTIONS] + [tables["per_valence"][v] for v in VALENCES]
    lines = [f"### {title}", ""] if title else []
    lines += ["| accuracy (%) | " + " | ".join(head) + " |", "|---|" + "---|" * len(head),
              "| judged | " + " | ".join(judged_text(c) for c in cells) + " |",
              "| fluent | " + " | ".join(fluent_text(c) for c in cells) + " |", "",
              "| emotion | " + " | ".join(f"{v} judged | {v} fluent" for v in VALENCES) + " |",
              "|---|" + "---|---|" * len(VALENCES)]
    for e in EMOTIONS:
        row = tables["per_emotion_valence"][e]
        lines.append(f"| {e} | " + " | ".join(f"{judged_text(row[v])} | {fluent_text(row[v])}" for v in VALENCES)
                     + " |")
    lines += ["", "judged: the judge says the reply's style matches its target emotion; fluent: judged a match "
                  "and fluent (emojax.judge.fluency).",
              f"Judge failures (counted as no match): {o['judge_errors']}. Fluent replies: {o['fluent']}/{o['total']}."]
    return "\n".join(lines) + "\n"
