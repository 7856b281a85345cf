"""Snippets: code blocks taken out of replies, the library of code a user keeps, and runs of
snippets in a sandbox."""

from app.snippets.bwrap import SandboxUnavailable, languages
from app.snippets.extract import LANGUAGES, CodeBlock, Language, extract_blocks, guess_language
from app.snippets.library import (
    InvalidSnippet,
    SnippetLibrary,
    SnippetRecord,
    SnippetSummary,
    StoredVersion,
    filename,
)
from app.snippets.limits import RunLimits
from app.snippets.sandbox import RunResult, run_snippet

__all__ = [
    "LANGUAGES",
    "CodeBlock",
    "InvalidSnippet",
    "Language",
    "RunLimits",
    "RunResult",
    "SandboxUnavailable",
    "SnippetLibrary",
    "SnippetRecord",
    "SnippetSummary",
    "StoredVersion",
    "extract_blocks",
    "filename",
    "guess_language",
    "languages",
    "run_snippet",
]
