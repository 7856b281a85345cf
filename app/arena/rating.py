"""Ratings of models from a user's votes between pairs of them: a Bradley-Terry model, fitted
by maximum likelihood, on an Elo-like scale, with a 95% confidence interval.

The model: each model ``i`` has a strength ``θ_i`` and wins a comparison against ``j`` with
probability ``s(θ_i - θ_j)``, ``s(x) = 1 / (1 + e^-x)`` the logistic function. The ratings
are the ``θ`` that make the votes most likely, with

- **ties as half a win each**: a tie is one half-comparison won by each side (its likelihood
  term is ``s(θ_i - θ_j)^½ · s(θ_j - θ_i)^½``), as Chatbot Arena counts them;
- **"both bad" as a tie**: both models failed the same prompt, which is the same result on
  it, and leaving those votes out would rate a model on the prompts it was lucky with;
  Chatbot Arena (Chiang et al., 2024) also counts "tie (bothbad)" as a tie;
- **a weak prior** (``prior_ties``, one by default): each model has also tied that many
  times with a virtual player of strength 0. Without it a model that never lost (or never
  won) has no finite rating, and models in two groups never compared with each other have
  no rating relative to each other; with it every fit has one answer, a model with few votes
  stays near the middle, and one vote moves a rating by a finite step. Its pull is one
  comparison's worth: after a few dozen votes it hardly shows.

The scale is Elo's: ``400 · log10`` of the odds, so that 400 points mean odds of 10 to 1
(``rating_i - rating_j = 400 · log10(P(i beats j) / P(j beats i))``), anchored so that the
ratings of the models on the board average 1000. A board has no fixed reference model (as
Chatbot Arena anchors on one of its own), so its middle is the one anchor that means the same
on every board; only differences between models of one board mean anything.

The interval is a Wald interval from the Fisher information at the fit: the inverse of the
negative Hessian of the log-likelihood (prior included) is the covariance of the strengths,
and each rating's variance is that of ``θ_i - mean(θ)``; the interval is the rating ± 1.96
standard errors. Deterministic and one matrix inversion, where a bootstrap refits a few
hundred times; and between groups never compared it is as wide as the prior alone leaves it,
where a bootstrap over the votes would keep their prior-set offset and look sure of it.

Fitting is Newton's method with step halving (the log-likelihood is concave), in plain
Python: tens of models invert a tens-by-tens matrix a few times.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, get_args

K = TypeVar("K", bound=Hashable)

Outcome = Literal["left", "right", "tie", "both_bad"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)

# Each model's ties with the virtual player of strength 0 (see the module's docstring).
PRIOR_TIES = 1.0
MIDDLE = 1000.0
# Rating points per unit of θ (natural-log odds): 400 points for odds of 10 to 1.
SCALE = 400 / math.log(10)
Z_95 = 1.959963984540054
TOLERANCE = 1e-10
MAX_STEPS = 100


@dataclass(frozen=True)
class Vote(Generic[K]):
    """One vote: the model on the left against the one on the right, and which was better."""

    left: K
    right: K
    outcome: Outcome


@dataclass(frozen=True)
class Rating(Generic[K]):
    model: K
    rating: float
    low: float  # the 95% confidence interval
    high: float
    votes: int  # the votes this model took part in
    # Models of different groups were never compared, directly or through others: their
    # ratings are set apart by the prior alone (and their intervals are wide).
    group: int


def rate(votes: Iterable[Vote[K]], *, prior_ties: float = PRIOR_TIES) -> list[Rating[K]]:
    """The rating of each model of ``votes``, best first.

    Raises ``ValueError`` for a vote of a model against itself, an unknown outcome, a
    negative ``prior_ties``, or, with ``prior_ties`` 0, votes that leave a rating infinite
    or undefined (a model that never won or never lost within its group, two groups).
    """
    if prior_ties < 0:
        raise ValueError(f"prior_ties must be 0 or more, not {prior_ties}")
    index: dict[K, int] = {}
    # For each pair i < j: comparisons, and i's wins in them (a tie is half a win).
    games: dict[tuple[int, int], list[float]] = {}
    for vote in votes:
        if vote.left == vote.right:
            raise ValueError(f"a vote of {vote.left!r} against itself")
        if vote.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {vote.outcome!r}; one of {OUTCOMES}")
        i, j = (index.setdefault(model, len(index)) for model in (vote.left, vote.right))
        left_won = {"left": 1.0, "right": 0.0}.get(vote.outcome, 0.5)
        pair, won = ((i, j), left_won) if i < j else ((j, i), 1.0 - left_won)
        count = games.setdefault(pair, [0.0, 0.0])
        count[0] += 1
        count[1] += won
    models = list(index)
    if not models:
        return []
    if prior_ties == 0:
        _check_estimable(len(models), games)
    theta, covariance = _fit(len(models), games, prior_ties)
    groups = _groups(len(models), games)
    taken = [0] * len(models)
    for (i, j), (n, _) in games.items():
        taken[i] += int(n)
        taken[j] += int(n)
    mean = sum(theta) / len(theta)
    ratings = []
    for i, model in enumerate(models):
        rating = MIDDLE + SCALE * (theta[i] - mean)
        margin = Z_95 * SCALE * math.sqrt(max(covariance[i], 0.0))
        ratings.append(Rating(model, rating, rating - margin, rating + margin, taken[i],
                              groups[i]))
    return sorted(ratings, key=lambda r: -r.rating)


def _fit(
    size: int, games: dict[tuple[int, int], list[float]], prior_ties: float
) -> tuple[list[float], list[float]]:
    """The strengths that maximise the log-likelihood, and the variance of each one's
    difference from their mean."""
    theta = [0.0] * size

    def likelihood(theta: Sequence[float]) -> float:
        total = sum(
            won * _log_sigmoid(theta[i] - theta[j])
            + (n - won) * _log_sigmoid(theta[j] - theta[i])
            for (i, j), (n, won) in games.items()
        )
        return total + sum(
            prior_ties / 2 * (_log_sigmoid(t) + _log_sigmoid(-t)) for t in theta
        )

    for _ in range(MAX_STEPS):
        gradient, information = _derivatives(theta, games, prior_ties)
        inverse = _inverse(information)
        step = [sum(row[k] * gradient[k] for k in range(size)) for row in inverse]
        before, scale = likelihood(theta), 1.0
        while scale > 1e-6:
            tried = [t + scale * s for t, s in zip(theta, step, strict=True)]
            if likelihood(tried) >= before - 1e-12:
                break
            scale /= 2
        theta = tried
        if max(abs(scale * s) for s in step) < TOLERANCE:
            break
    _, information = _derivatives(theta, games, prior_ties)
    inverse = _inverse(information)
    if prior_ties == 0:
        # ``_derivatives`` added J = 11ᵀ to make the information invertible; the covariance
        # of the centred strengths is (information - J)⁺ = (information)⁻¹ - J/n².
        inverse = [[value - 1 / size**2 for value in row] for row in inverse]
    # The variance of θ_i - mean(θ): the diagonal of C Σ C, C = I - 11ᵀ/n.
    row_means = [sum(row) / size for row in inverse]
    grand = sum(row_means) / size
    variance = [inverse[i][i] - 2 * row_means[i] + grand for i in range(size)]
    return theta, variance


def _derivatives(
    theta: Sequence[float], games: dict[tuple[int, int], list[float]], prior_ties: float
) -> tuple[list[float], list[list[float]]]:
    """The gradient of the log-likelihood and its information matrix (the negative Hessian);
    with no prior, plus 11ᵀ, which pins the mean of a step to 0 (the likelihood does not
    change when every strength moves by the same amount)."""
    size = len(theta)
    gradient = [0.0] * size
    information = [[1.0 if prior_ties == 0 else 0.0] * size for _ in range(size)]
    for i, t in enumerate(theta):
        p = _sigmoid(t)
        gradient[i] += prior_ties * (0.5 - p)
        information[i][i] += prior_ties * p * (1 - p)
    for (i, j), (n, won) in games.items():
        p = _sigmoid(theta[i] - theta[j])
        gradient[i] += won - n * p
        gradient[j] -= won - n * p
        weight = n * p * (1 - p)
        information[i][i] += weight
        information[j][j] += weight
        information[i][j] -= weight
        information[j][i] -= weight
    return gradient, information


def _inverse(matrix: Sequence[Sequence[float]]) -> list[list[float]]:
    """The inverse of a positive definite matrix (Gauss-Jordan elimination)."""
    size = len(matrix)
    rows = [[*row, *(1.0 if k == i else 0.0 for k in range(size))]
            for i, row in enumerate(matrix)]
    for column in range(size):
        pivot = max(range(column, size), key=lambda r: abs(rows[r][column]))
        rows[column], rows[pivot] = rows[pivot], rows[column]
        lead = rows[column][column]
        rows[column] = [value / lead for value in rows[column]]
        for r in range(size):
            if r != column and rows[r][column]:
                factor = rows[r][column]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[column], strict=True)]
    return [row[size:] for row in rows]


def _check_estimable(size: int, games: dict[tuple[int, int], list[float]]) -> None:
    """Without a prior, the ratings are finite and defined only if every model can be
    reached from every other through wins (a tie is a win each way): Zermelo's condition."""
    beat: list[set[int]] = [set() for _ in range(size)]
    for (i, j), (n, won) in games.items():
        if won > 0:
            beat[i].add(j)
        if n - won > 0:
            beat[j].add(i)
    beaten_by: list[set[int]] = [set() for _ in range(size)]
    for winner, losers in enumerate(beat):
        for loser in losers:
            beaten_by[loser].add(winner)
    for edges in (beat, beaten_by):
        seen, todo = {0}, [0]
        while todo:
            for other in edges[todo.pop()] - seen:
                seen.add(other)
                todo.append(other)
        if len(seen) < size:
            raise ValueError(
                "without a prior these votes give no finite ratings: a model never won or "
                "never lost against the others, or two groups were never compared"
            )


def _groups(size: int, games: dict[tuple[int, int], list[float]]) -> list[int]:
    """Each model's group (0, 1, ... in order of first appearance): the models it was
    compared with, directly or through others."""
    parent = list(range(size))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in games:
        parent[root(j)] = root(i)
    numbers: dict[int, int] = {}
    return [numbers.setdefault(root(i), len(numbers)) for i in range(size)]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))
