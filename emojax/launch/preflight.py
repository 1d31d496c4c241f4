"""What a launcher checks before it loads a model or writes anything into a run directory.

Each check raises `InputError` with one line naming the flag, file or record and saying how to fix
it, so a bad configuration fails in seconds instead of after minutes of generation, and never
leaves a run directory behind (docs/runs.md, "Bad inputs").

    check_settings(settings)            method settings finite and in range (the flag named)
    check_model_source(spec)            the checkpoint exists; an HF directory has tokenizer files
    check_tokenizer(model)              the loaded model has a tokenizer with a chat template
    check_prompt_lengths(...)           every prompt plus its reply fits the model's maximum position
    make_checked_judge(spec)            the judge is constructible and, for an HTTP judge, answers
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from emojax.data import SevRecord, VALENCES, items
from emojax.method.prompts import CHARS_PER_POSITION, emotion_messages, render
from emojax.runs import InputError
from emojax.stages.context import Settings

SEED_LIMIT = 2 ** 32   # jax.random.key takes a uint32 seed


def check_number(flag: str, value: Any, *, above: float | None = None, at_least: float | None = None,
                 below: float | None = None, integer: bool = False) -> None:
    """`value` is a finite number (an integer if `integer`) within the stated bounds, else an
    InputError naming --flag and the range."""
    bounds = [f"{sign} {_bound(b)}" for sign, b in ((">", above), (">=", at_least), ("<", below)) if b is not None]
    wanted = f"{'an integer' if integer else 'a finite number'} {' and '.join(bounds)}".strip()
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (integer and not isinstance(value, int)) or not math.isfinite(value) or \
            (above is not None and value <= above) or (at_least is not None and value < at_least) or \
            (below is not None and value >= below):
        raise InputError(f"--{flag}={value!r}: expected {wanted}")


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def check_settings(settings: Settings) -> None:
    """Every numeric method setting finite and in its range."""
    check_number("min_complete_groups", settings.min_complete_groups, at_least=1, integer=True)
    if settings.steer_alpha is not None:
        check_number("steer_alpha", settings.steer_alpha, above=0)
    check_number("modulation_scale", settings.modulation_scale, above=0)
    check_number("seed", settings.seed, at_least=0, below=SEED_LIMIT, integer=True)


def check_model_source(spec: str) -> None:
    """The checkpoint a --model value names exists, and an HF directory holds tokenizer files (the
    stages render chat prompts), checked before any weight is read."""
    from emojax.loading import HF_TOKENIZER_FILES, resolve_source

    try:
        source, _ = resolve_source(spec, join=False)  # a model split over packages is joined at load time
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"--model={spec}: {err}") from None
    if source.is_dir() and not any((source / name).is_file() for name in HF_TOKENIZER_FILES):
        raise InputError(f"--model={spec}: {source} has no tokenizer files ({', '.join(HF_TOKENIZER_FILES[:3])}, "
                         "...); copy the checkpoint's tokenizer into it")


def check_tokenizer(model: Any) -> None:
    """The loaded model can render chat prompts."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        missing = "no tokenizer" if tokenizer is None else "a tokenizer without a chat template"
        raise InputError(f"--model={model.source}: the checkpoint has {missing}; emojax needs an "
                         "instruction-tuned checkpoint's tokenizer and chat template")


def check_prompt_lengths(model: Any, records: Sequence[SevRecord], source: str, max_new_tokens: int,
                         date_string: str) -> None:
    """Every emotion prompt of `records` (the longest prompts any stage builds) plus `max_new_tokens`
    fits the model's maximum position; the first record that does not is named."""
    limit = model.config.max_position
    for record in records:
        chars = len(record.scenario) + max(len(record.event(v)) for v in VALENCES)
        if chars > CHARS_PER_POSITION * limit:
            raise InputError(f"{source}: record {record.skeleton_id}: its scenario and event are {chars:,} "
                             f"characters, far more than the model's {limit:,} positions hold; shorten it")
    every = items(records)
    texts = [render(model.tokenizer, emotion_messages(item), date_string=date_string) for item in every]
    lengths = [len(ids) for ids in model.tokenizer(texts)["input_ids"]] if texts else []
    for item, length in zip(every, lengths):
        if length + max_new_tokens > limit:
            raise InputError(f"{source}: record {item.skeleton_id} ({item.valence}, {item.emotion}): a prompt of "
                             f"{length:,} tokens plus {max_new_tokens} new tokens exceeds the model's maximum "
                             f"position {limit:,}; shorten its scenario or event")


def make_checked_judge(spec: str, *, timeout_s: float | None = None, deadline_s: float | None = None) -> Any:
    """The judge of a --judge value, checked: an HTTP judge's key, URL and one authenticated request,
    within the same per-request timeout and per-verdict deadline its verdicts get."""
    from emojax.judge import make_judge

    for flag, value in (("judge_timeout_s", timeout_s), ("judge_deadline_s", deadline_s)):
        if value is not None:
            check_number(flag, value, above=0)
    try:
        judge = make_judge(spec, timeout_s=timeout_s, deadline_s=deadline_s)
    except (ValueError, FileNotFoundError) as err:
        raise InputError(f"--judge={spec}: {err}") from None
    check_judge(judge, f"--judge={spec}")
    return judge


def check_judge(judge: Any, where: str = "judge") -> None:
    """Run the judge's own start-up check when it has one (HttpJudge.check); offline judges need none."""
    check = getattr(judge, "check", None)
    if check is None:
        return
    try:
        check()
    except ValueError as err:  # the judge's message names its key variable, URL or status
        raise InputError(f"{where}: {err}") from None

