"""Wilson intervals and McNemar's test against published values."""
from __future__ import annotations

import pytest

from emojax.evaluation.stats import discordant_pairs, mcnemar, wilson_interval


@pytest.mark.parametrize("successes, total, low, high", [
    # Newcombe (1998), Stat. Med. 17:857, Table I, method 3 (score interval without continuity correction).
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_newcombe(successes, total, low, high):
    got = wilson_interval(successes, total)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_edges_and_bad_input():
    assert wilson_interval(0, 0) is None
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(5, 10, confidence=0.99)[0] < wilson_interval(5, 10)[0]
    with pytest.raises(ValueError, match="successes <= total"):
        wilson_interval(11, 10)


def test_mcnemar_matches_fagerland():
    """Fagerland, Lydersen & Laake (2013), BMC Med. Res. Methodol. 13:91: 1 and 7 discordant pairs give
    exact conditional p = 0.070 and mid-p = 0.039 (= 9/128 and 5/128)."""
    result = mcnemar(1, 7)
    assert result["exact_p"] == pytest.approx(9 / 128) and result["mid_p"] == pytest.approx(5 / 128)
    assert mcnemar(7, 1) == {**result, "b": 7, "c": 1}


def test_mcnemar_without_a_difference():
    assert mcnemar(0, 0)["exact_p"] == 1.0 and mcnemar(4, 4)["mid_p"] == pytest.approx(1.0)
    assert mcnemar(0, 10)["exact_p"] == pytest.approx(2 / 1024)
    with pytest.raises(ValueError):
        mcnemar(-1, 2)


def test_discordant_pairs_needs_the_same_items():
    first = {"a": 1, "b": 0, "c": 1, "d": 0}
    second = {"a": 1, "b": 1, "c": 0, "d": 0}
    assert discordant_pairs(first, second) == (1, 1)
    assert discordant_pairs(first, {**second, "c": 1}) == (0, 1)
    with pytest.raises(ValueError, match="different items"):
        discordant_pairs(first, {"a": 1})
