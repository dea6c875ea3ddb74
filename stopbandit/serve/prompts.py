"""Requests as the probe driver sees them: a raw completions prompt, rendered once.

The driver works on ``/v1/completions``, so a chat request's messages are
rendered to the prompt the engine would have built: vLLM and our decoder server
render them through ``/tokenize`` (``messages``) and give the text back through
``/detokenize``; llama.cpp's server through ``/apply-template``; other engines
get the message contents joined by newlines (what our decoder server does for a
tokenizer without a chat template). ``think_start`` follows the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stopbandit.errors import InputError


def message_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or OpenAI's list of parts (text parts joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return ""


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """The request's ``messages``, validated: a non-empty list of {role, content} objects."""
    if messages is None:
        raise InputError("request field messages is required: a non-empty list of {role, content} objects")
    if not isinstance(messages, list) or not messages:
        raise InputError(f"request field messages must be a non-empty list of {{role, content}} objects, "
                         f"got {str(messages)[:80]}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise InputError(f"request field messages[{i}] must be an object with role and content, got {str(m)[:80]}")
        if not isinstance(m.get("role"), str):
            raise InputError(f"request field messages[{i}].role must be a string, got {m.get('role')!r}")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InputError(f"request field messages[{i}].content must be a string or a list of parts, "
                             f"got {type(content).__name__}")
    return [dict(m) for m in messages]


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The user's last message (the prompt the Selector's features come from)."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return message_text(m.get("content"))
    return message_text(messages[-1].get("content"))


def check_prompt(prompt: Any) -> str:
    """A completions request's single prompt (a string, or a list holding one string)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InputError(f"request field prompt must be a string (one prompt per request), got {str(prompt)[:80]}")
    return prompt


def joined(messages: Sequence[Mapping[str, Any]]) -> str:
    """Message contents joined by newlines: the rendering for engines without a template endpoint."""
    return "\n".join(message_text(m.get("content")) for m in messages)


__all__ = ["check_messages", "check_prompt", "joined", "last_user_text", "message_text"]
