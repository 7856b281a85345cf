"""The language a conversation is about: it shapes the system prompt, so that code comes in
that language, in fenced blocks tagged with it (which the page highlights)."""

from __future__ import annotations

LANGUAGE_NAMES = {
    "python": "Python", "javascript": "JavaScript", "typescript": "TypeScript",
    "bash": "Bash", "sql": "SQL", "go": "Go", "rust": "Rust", "c": "C", "cpp": "C++",
    "java": "Java",
}


def system_prompt_for(system_prompt: str, language: str | None) -> str:
    """The system prompt sent for a conversation in ``language`` (None or "": any language).

    The user's own text never goes here: it is always sent in the user role.
    """
    if not language:
        return system_prompt
    name = LANGUAGE_NAMES[language]
    rule = (
        f"Write code in {name} unless the user asks for another language, in fenced code "
        f"blocks tagged {language}."
    )
    return f"{system_prompt.rstrip()}\n\n{rule}" if system_prompt.strip() else rule
