"""Emotion-expression accuracy tables of a judged stage (method.md §7).

Every judged stage (prompting, steering, circuit modulation, baselines) reports the fraction of texts
the judge matched to their target emotion: overall, per emotion, per valence and per emotion x
valence, as percentages rounded to 2 decimals, always with the matched/total counts and the number of
judge failures (which count as non-matches, §4.3).

Records are the §3.3 dicts: `emotion`, `valence` and `judge: {match, reason, error}`.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from emojax.data import EMOTIONS, VALENCES

Cell = dict[str, Any]


def cell(matches: Sequence[int], errors: int = 0) -> Cell:
    """{accuracy (percent, 2 decimals; None when empty), matched, total, judge_errors}."""
    total, matched = len(matches), int(sum(matches))
    percent = round(100.0 * matched / total, 2) if total else None
    return {"accuracy": percent, "matched": matched, "total": total, "judge_errors": int(errors)}


def _verdict(record: Mapping[str, Any], index: int) -> tuple[str, str, int, bool]:
    try:
        emotion, valence, judge = record["emotion"], record["valence"], record["judge"]
        match = judge["match"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"record {index} ({record.get('key', '?') if isinstance(record, Mapping) else record!r}): "
                         f"needs emotion, valence and judge.match ({err})") from None
    if emotion not in EMOTIONS or valence not in VALENCES:
        raise ValueError(f"record {index} ({record.get('key', '?')}): unknown emotion {emotion!r} or valence "
                         f"{valence!r}")
    if match not in (0, 1):
        raise ValueError(f"record {index} ({record.get('key', '?')}): judge.match must be 0 or 1, got {match!r}")
    return emotion, valence, int(match), judge.get("error") is not None


def accuracy_tables(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy overall, per emotion, per valence and per emotion x valence (canonical orders)."""
    rows = [_verdict(r, i) for i, r in enumerate(records)]

    def select(emotion: str | None = None, valence: str | None = None) -> Cell:
        chosen = [(m, err) for e, v, m, err in rows
                  if (emotion is None or e == emotion) and (valence is None or v == valence)]
        return cell([m for m, _ in chosen], sum(err for _, err in chosen))

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


def _pct(c: Mapping[str, Any]) -> str:
    return "—" if c["accuracy"] is None else f"{c['accuracy']:.2f}"


def accuracy_markdown(tables: Mapping[str, Any], title: str | None = None) -> str:
    """Two Markdown tables: overall / per emotion / per valence with counts, then emotion x valence."""
    o = tables["overall"]
    head = ["overall"] + list(EMOTIONS) + list(VALENCES)
    cells = [o] + [tables["per_emotion"][e] for e in EMOTIONS] + [tables["per_valence"][v] for v in VALENCES]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
              "| " + " | ".join(f"{_pct(c)} ({c['matched']}/{c['total']})" for c in cells) + " |", "",
              "| emotion | " + " | ".join(VALENCES) + " |", "|---|" + "---|" * len(VALENCES)]
    for e in EMOTIONS:
        row = tables["per_emotion_valence"][e]
        lines.append(f"| {e} | " + " | ".join(f"{_pct(row[v])} ({row[v]['matched']}/{row[v]['total']})"
                                              for v in VALENCES) + " |")
    lines += ["", f"Judge failures (counted as no match): {o['judge_errors']}."]
    return "\n".join(lines) + "\n"
