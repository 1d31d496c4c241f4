"""SEV data: records, items and groups, the bundled splits, cross-fit folds and subsamples."""
from emojax.data.banned_words import BANNED_WORDS, find_banned_words
from emojax.data.sev import (
    EMOTIONS,
    THEME_PREFIXES,
    VALENCES,
    DatasetError,
    Group,
    Item,
    LintIssue,
    SevRecord,
    file_sha256,
    groups,
    items,
    lint_records,
    load_dataset,
    load_sev,
    resolve_dataset,
)
from emojax.data.splits import (
    FOLDS,
    CrossFitRound,
    cross_fit_folds,
    cross_fit_rounds,
    fold_of,
    subsample,
)

__all__ = [
    "BANNED_WORDS", "EMOTIONS", "FOLDS", "THEME_PREFIXES", "VALENCES",
    "CrossFitRound", "DatasetError", "Group", "Item", "LintIssue", "SevRecord",
    "cross_fit_folds", "cross_fit_rounds", "file_sha256", "find_banned_words", "fold_of",
    "groups", "items", "lint_records", "load_dataset", "load_sev", "resolve_dataset", "subsample",
]
