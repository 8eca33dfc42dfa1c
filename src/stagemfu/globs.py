"""Shell-style patterns (``aten::*``, ``decode_?``, ``layer[0-3]``) for range names, as polars regexes.

``--range``, ``--within`` and the stage keys of a FLOPs file match range names with these
patterns, as :mod:`fnmatch` would, but inside polars (whose regex engine has no look-around, so
the standard library's ``fnmatch.translate`` cannot be reused). A name that is no pattern is
matched exactly.
"""

from __future__ import annotations

GLOB_CHARS = "*?["
META = set("\\.+*?()|[]{}^$#&-~")


def is_glob(text: str) -> bool:
    """True when ``text`` holds a pattern character (``*``, ``?``, ``[``)."""
    return any(c in text for c in GLOB_CHARS)


def glob_regex(pattern: str) -> str:
    """A regex matching exactly the whole strings ``pattern`` matches (``*`` any run, ``?`` one
    character, ``[...]``/``[!...]`` a character class; an unclosed ``[`` is itself)."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[" and (end := pattern.find("]", _class_start(pattern, i))) != -1:
            out.append(_char_class(pattern[i:end]))
            i = end + 1
        else:
            out.append(_escape(c))
    return "(?s)^" + "".join(out) + "$"


def _char_class(body: str) -> str:
    """``[...]`` as fnmatch reads it: ``a-z`` ranges (a reversed one matches nothing), ``!`` negates."""
    negate = body.startswith("!")
    body = body[1:] if negate else body
    items, j = [], 0
    while j < len(body):
        if j + 2 < len(body) and body[j + 1] == "-":
            if body[j] <= body[j + 2]:
                items.append(f"{_escape(body[j])}-{_escape(body[j + 2])}")
            j += 3
        else:
            items.append(_escape(body[j]))
            j += 1
    if not items:
        return "[\\s\\S]" if negate else "[^\\s\\S]"  # anything / nothing
    return "[" + ("^" if negate else "") + "".join(items) + "]"


def _class_start(pattern: str, i: int) -> int:
    """Where the closing ``]`` of a class opened before ``i`` may be: after ``!`` and a leading ``]``."""
    i += pattern[i : i + 1] == "!"
    return i + (pattern[i : i + 1] == "]")


def _escape(char: str) -> str:
    return "\\" + char if char in META else char
