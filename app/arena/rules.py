"""What Compare refuses, for the page and the REST API alike, before anything is sent or read.

    ArenaError       base class; ``str(err)`` is one sentence a user can act on
    ├── SameModel    both sides of a comparison name the same model
    ├── TooFewModels a blind comparison, with fewer than two models on offer
    └── BoardClosed  the board of all users was asked for, and ALLOW_SHARED_BOARD is off
"""

from __future__ import annotations

from app.settings import Settings


class ArenaError(Exception):
    """Base class of Compare's refusals."""


class SameModel(ArenaError):
    """Raised by ``check_pair`` when both sides name the same model."""


class TooFewModels(ArenaError):
    """Raised by ``check_offered`` when a blind comparison has fewer than two models to pick."""


class BoardClosed(ArenaError):
    """Raised by ``board_owner`` for the board of all users while the operator allows none."""


def check_pair(left: str, right: str) -> None:
    """Refuse a comparison of a model with itself (model ids as the backends name them).

    The backend is not part of a model's name here: the router picks the backend that serves
    a model, so one model cannot be put against itself on two backends.
    """
    if left == right:
        raise SameModel(f"Both sides are {left}: pick two different models to compare.")


def check_offered(offered: int) -> None:
    """Refuse a blind comparison among ``offered`` models, fewer than two."""
    if offered < 2:
        raise TooFewModels(
            f"A blind comparison needs two models on offer; this server offers {offered}. "
            "Compare named models instead."
        )


def board_owner(settings: Settings, user_id: int, everyone: bool) -> int | None:
    """Whose votes a board counts: the user's own (their id), or everyone's (None) when asked
    for and allowed by ALLOW_SHARED_BOARD; asked for and not allowed, ``BoardClosed``."""
    if not everyone:
        return user_id
    if not settings.allow_shared_board:
        raise BoardClosed(
            "The board of all users is off on this server (ALLOW_SHARED_BOARD=false); "
            "your own board is shown."
        )
    return None
