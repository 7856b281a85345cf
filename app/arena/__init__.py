"""Compare: one message to two models, a vote between their replies, and a board of ratings;
no Gradio, no HTTP, no SQL (the votes are kept by ``app.store.comparisons``)."""

from app.arena.rating import OUTCOMES, Outcome, Rating, Vote, rate

__all__ = ["OUTCOMES", "Outcome", "Rating", "Vote", "rate"]
