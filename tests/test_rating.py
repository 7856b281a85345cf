"""The Bradley-Terry ratings of app.arena.rating, against numbers worked out apart from it: a
closed form, an equation solved by bisection, another algorithm (Zermelo's / Hunter's MM
iteration), and simulated votes of known strengths."""

from __future__ import annotations

import math
import random

import pytest

from app.arena.rating import Rating, Vote, rate

POINTS = 400 / math.log(10)  # rating points per unit of natural-log odds
Z = 1.959963984540054


def votes(a: str, b: str, a_won: int, b_won: int, ties: int = 0) -> list[Vote[str]]:
    return ([Vote(a, b, "left")] * a_won + [Vote(a, b, "right")] * b_won
            + [Vote(a, b, "tie")] * ties)


def by_model(ratings: list[Rating[str]]) -> dict[str, Rating[str]]:
    return {r.model: r for r in ratings}


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_two_models_without_a_prior_give_the_closed_form() -> None:
    """A beat B 3 times of 4: P(A beats B) = 3/4, the odds 3, so A - B = 400·log10(3) =
    190.85; each rating sits half of it from 1000. The difference's variance is
    1 / (n·p·(1 - p)) = 4/3, each rating's (a half of the difference) 1/3."""
    ratings = by_model(rate(votes("A", "B", 3, 1), prior_ties=0))

    assert ratings["A"].rating - ratings["B"].rating == pytest.approx(190.8485, abs=1e-4)
    assert ratings["A"].rating == pytest.approx(1000 + 190.8485 / 2, abs=1e-4)
    half_width = Z * POINTS * math.sqrt(1 / 3)
    assert half_width == pytest.approx(196.58, abs=0.01)
    for r in ratings.values():
        assert (r.rating - r.low, r.high - r.rating) == pytest.approx((half_width,) * 2)
        assert (r.votes, r.group) == (4, 0)


def test_two_models_with_the_prior_solve_its_equation() -> None:
    """With each model also tied once with a player of strength 0: by symmetry θ_B = -θ_A = -x,
    and A's gradient is 3 + ½ - 4·s(2x) - s(x) = 0 (A's 3 wins and half a win against the
    virtual player, less the wins expected), solved here by bisection: x = 0.47444, A - B =
    2x in natural-log odds, 164.84 points."""
    low, high = 0.0, 5.0
    for _ in range(200):
        x = (low + high) / 2
        low, high = (x, high) if 3.5 - 4 * sigmoid(2 * x) - sigmoid(x) > 0 else (low, x)
    assert x == pytest.approx(0.47444, abs=1e-5)

    ratings = by_model(rate(votes("A", "B", 3, 1)))

    assert ratings["A"].rating - ratings["B"].rating == pytest.approx(POINTS * 2 * x, abs=1e-6)
    assert ratings["A"].rating - ratings["B"].rating == pytest.approx(164.84, abs=0.01)
    assert ratings["A"].rating + ratings["B"].rating == pytest.approx(2000)


def minorize_maximize(games: list[Vote[str]], prior_ties: float) -> dict[str, float]:
    """Another algorithm, written apart: Hunter's (2004) MM iteration over strengths π (Zermelo's
    of 1929), π_i ← W_i / Σ_j n_ij / (π_i + π_j), W_i the wins of i (a tie half each), the
    virtual player held at π = 1; ratings 400·log10(π) centred on 1000."""
    models = sorted({v.left for v in games} | {v.right for v in games})
    wins = {m: prior_ties / 2 for m in models}
    met: dict[tuple[str, str], float] = {}
    for v in games:
        share = {"left": 1.0, "right": 0.0}.get(v.outcome, 0.5)
        wins[v.left] += share
        wins[v.right] += 1 - share
        met[v.left, v.right] = met.get((v.left, v.right), 0) + 1
        met[v.right, v.left] = met.get((v.right, v.left), 0) + 1
    strength = dict.fromkeys(models, 1.0)
    for _ in range(20000):
        strength = {
            m: wins[m] / (prior_ties / (strength[m] + 1) + sum(
                n / (strength[m] + strength[o]) for (me, o), n in met.items() if me == m))
            for m in models
        }
    logs = {m: 400 * math.log10(s) for m, s in strength.items()}
    mean = sum(logs.values()) / len(logs)
    return {m: 1000 + value - mean for m, value in logs.items()}


THREE = (votes("A", "B", 5, 2, ties=1) + votes("B", "C", 4, 1) + votes("C", "A", 1, 3)
         + [Vote("A", "C", "both_bad")] * 2)


@pytest.mark.parametrize("prior_ties", [0.0, 1.0])
def test_three_models_match_another_algorithm(prior_ties: float) -> None:
    expected = minorize_maximize(THREE, prior_ties)

    ratings = rate(THREE, prior_ties=prior_ties)

    assert {r.model: r.rating for r in ratings} == pytest.approx(expected, abs=1e-6)
    assert [r.model for r in ratings] == ["A", "B", "C"], "best first"
    assert [r.votes for r in ratings] == [8 + 6, 8 + 5, 5 + 6]


def test_both_bad_counts_as_a_tie() -> None:
    both_bad = [*votes("A", "B", 2, 1), Vote("A", "B", "both_bad")]
    assert rate(both_bad) == rate(votes("A", "B", 2, 1, ties=1))


def test_the_interval_narrows_with_more_votes() -> None:
    widths = [rate(votes("A", "B", 3 * k, k))[0] for k in (1, 10, 100)]
    spans = [r.high - r.low for r in widths]
    assert spans[0] > spans[1] > spans[2]
    assert spans[1] / spans[2] == pytest.approx(math.sqrt(10), rel=0.05)


def test_simulated_votes_find_the_true_ratings_within_their_intervals() -> None:
    true = {"big": 1150.0, "mid": 1050.0, "small": 950.0, "tiny": 850.0}
    draw = random.Random(30)
    games: list[Vote[str]] = []
    for _ in range(3000):
        a, b = draw.sample(sorted(true), 2)
        p = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
        games.append(Vote(a, b, "left" if draw.random() < p else "right"))

    ratings = by_model(rate(games))

    for model, value in true.items():
        assert ratings[model].low < value < ratings[model].high, model
        assert ratings[model].high - ratings[model].low < 60


def test_a_model_that_never_won_or_never_lost_gets_a_finite_rating() -> None:
    ratings = by_model(rate(votes("A", "B", 5, 0) + votes("B", "C", 5, 0)))

    assert ratings["A"].rating > ratings["B"].rating > ratings["C"].rating
    assert all(math.isfinite(r.low) and math.isfinite(r.high) for r in ratings.values())
    with pytest.raises(ValueError, match="never won or never lost"):
        rate(votes("A", "B", 5, 0), prior_ties=0)


def test_groups_never_compared_are_told_apart_and_uncertain() -> None:
    ratings = by_model(rate(votes("A", "B", 10, 10) + votes("C", "D", 10, 10)))

    assert {m: r.group for m, r in ratings.items()} == {"A": 0, "B": 0, "C": 1, "D": 1}
    assert all(r.rating == pytest.approx(1000) for r in ratings.values())
    joined = by_model(rate(votes("A", "B", 10, 10) + votes("C", "D", 10, 10)
                           + votes("A", "C", 10, 10)))
    assert ratings["A"].high - ratings["A"].low > joined["A"].high - joined["A"].low


def test_no_votes_no_ratings_and_a_model_against_itself_is_refused() -> None:
    assert rate([]) == []
    with pytest.raises(ValueError, match="against itself"):
        rate([Vote("A", "A", "tie")])
    with pytest.raises(ValueError, match="unknown outcome"):
        rate([Vote("A", "B", "a")])  # type: ignore[arg-type]


def test_the_intervals_hold_the_true_ratings_95_times_in_100() -> None:
    """Over 300 boards of 400 simulated votes each (a fixed seed), the share of intervals
    that hold the true rating: 95% of them, within the play of chance (its standard error
    over 1200 intervals is 0.6%)."""
    true = {"big": 1150.0, "mid": 1050.0, "small": 950.0, "tiny": 850.0}
    draw = random.Random(7)
    held = total = 0
    for _ in range(300):
        games = []
        for _ in range(400):
            a, b = draw.sample(sorted(true), 2)
            p = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
            games.append(Vote(a, b, "left" if draw.random() < p else "right"))
        for r in rate(games):
            held += r.low < true[r.model] < r.high
            total += 1
    assert 0.93 < held / total < 0.97
