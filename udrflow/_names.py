"""Rules for the names of tables, branches and views (they become file and directory names)."""

from __future__ import annotations

import re

from udrflow.errors import InvalidNameError

NAME_BYTES_MAX = 128
RESERVED_TABLE_NAMES = frozenset({"__changelog"})
#: Tables udrflow keeps for itself and reads with a schema it expects: only udrflow creates
#: them (``internal=True``). A user table named like the view registry broke every write.
INTERNAL_TABLE_NAMES = frozenset({"__udrflow_views"})
_ALLOWED = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def check_new_name(name: object, kind: str, *, internal: bool = False) -> str:
    """``check_name`` for a table or view about to be created: also refuses the names
    udrflow reserves for its own tables, unless udrflow itself (``internal``) creates one."""
    check_name(name, kind)
    if name in INTERNAL_TABLE_NAMES and not internal:
        raise InvalidNameError(f"{kind} name {name!r} is reserved: it is udrflow's own table (the view registry)")
    return name


def check_name(name: object, kind: str) -> str:
    """Return ``name`` if it is a valid ``kind`` name, else raise InvalidNameError naming the rule."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{kind} name must be a str: got {type(name).__name__}")
    if not name:
        raise InvalidNameError(f"{kind} name must not be empty")
    try:
        encoded = name.encode()
    except UnicodeEncodeError:
        raise InvalidNameError(f"{kind} name must be valid Unicode text: got {name[:20]!r} (a lone surrogate)") from None
    if len(encoded) > NAME_BYTES_MAX:
        raise InvalidNameError(f"{kind} name must be at most {NAME_BYTES_MAX} bytes: got {len(encoded)} "
                               f"bytes ({name[:20]!r}...)")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidNameError(f"{kind} name must not contain control characters: got {name!r}")
    if "/" in name or "\\" in name or name in (".", "..") or ".." in name:
        raise InvalidNameError(f"{kind} name must not contain path separators or '..': got {name!r}")
    if kind in ("table", "view") and name in RESERVED_TABLE_NAMES:
        raise InvalidNameError(f"{kind} name {name!r} is reserved: SQL resolves it to the table of row changes")
    if not _ALLOWED.fullmatch(name):
        raise InvalidNameError(f"{kind} name must start with a letter or '_' and contain only letters, digits, "
                               f"'_', '.' and '-': got {name!r}")
    return name
