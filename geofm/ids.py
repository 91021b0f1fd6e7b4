r"""Which STAC item ids and tile codes may become parts of run-root paths, and how.

Item ids and grid codes come from the internet and end up in file names
(``meta/<scene_id>.parquet``, ``chips/<scene_id>/<chip_id>.nc``). This module is the
one owner of the rule (docs/contracts.md, "Ids as file names"):

- **Safe alphabet**: ``A-Z a-z 0-9 . _ -``, not starting with ``.``. A safe id is its
  own file name, so the names of ordinary ids (``S2A_33UUP_20210601_0_L2A``) and every
  chip id are unchanged.
- **Rejected** (:func:`id_problem` says why): an id that is empty, not a string, ``.``
  or ``..``, starts with ``.``, is an absolute path (``/x``, ``\x``, ``C:\x``), has a
  ``.`` or ``..`` segment between ``/`` or ``\`` (``a/../../b``), holds a control
  character, or is longer than :data:`MAX_PART_LENGTH` once encoded.
- **Mapped**: any other character (``/``, ``:``, space, ``%``, non-ASCII) is
  percent-encoded as its UTF-8 bytes, ``%XX`` with upper-case hex; ``%`` itself is
  encoded (``%25``), so the mapping is reversible and two ids never share a file name.
  :func:`decode_id` is its exact inverse and refuses names that :func:`encode_id`
  cannot have written.

Tile codes (``grid:code``, ``s2:mgrs_tile``, ``mgrs:*``) are part of every chip id, so
they must use the safe alphabet as they are (:func:`tile_problem`); they are never
encoded.
"""

from __future__ import annotations

import re
import unicodedata

from geofm.exceptions import UnsafePathError

#: Characters a path part may hold as they are.
SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")

#: Longest encoded id, characters: leaves room in a 255-byte file name for
#: ``_patches.npy`` and the temporary-file affixes of :func:`geofm.io.atomic_path`.
MAX_PART_LENGTH = 200

#: Longest tile code, characters.
MAX_TILE_LENGTH = 64

#: What the error messages tell the user to do.
ID_FIX = ("item ids become file names: rename the item (letters, digits, '.', '_' and '-' "
          "are kept as they are, other characters are percent-encoded; ids may not be "
          "'.' or '..', start with '.', be absolute paths, hold '.'/'..' path segments or "
          "control characters)")
TILE_FIX = ("tile codes become part of every chip id and file name: use letters, digits, "
            "'.', '_' and '-' only (e.g. 'MGRS-33UUP'), not starting with '.'")

_ENCODED = re.compile(r"(?:[A-Za-z0-9._-]|%[0-9A-F]{2})*")


def _encode(value: str) -> str:
    out = []
    for ch in value:
        if ch in SAFE_CHARS:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def id_problem(value: object) -> str | None:
    """Why ``value`` cannot be an item id in run-root paths, or ``None`` if it can.

    Args:
        value: the id as read from the item (any JSON value).

    Returns:
        A short reason (e.g. ``"has a '..' path segment"``) or ``None``.
    """
    if not isinstance(value, str):
        return f"is not a string (got {type(value).__name__} {value!r})"
    if value == "":
        return "is empty"
    if value in (".", ".."):
        return f"is {value!r}"
    if value.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[/\\]", value):
        return "is an absolute path"
    if any(seg in (".", "..") for seg in re.split(r"[/\\]", value)):
        return "has a '.' or '..' path segment"
    if value.startswith("."):
        return "starts with '.' (a hidden file name)"
    bad = next((ch for ch in value if unicodedata.category(ch) in ("Cc", "Cs")), None)
    if bad is not None:
        return f"holds the control character {bad!r}"
    if len(_encode(value)) > MAX_PART_LENGTH:
        return f"is longer than {MAX_PART_LENGTH} characters once percent-encoded"
    return None


def encode_id(value: str) -> str:
    """The file-name form of an item id (itself when it uses only :data:`SAFE_CHARS`).

    Args:
        value: the item id.

    Returns:
        The id with every other character percent-encoded (UTF-8, upper-case hex).

    Raises:
        UnsafePathError: the id is rejected (see :func:`id_problem`).
    """
    problem = id_problem(value)
    if problem is not None:
        raise UnsafePathError(f"item id {value!r} {problem}; {ID_FIX}", value=value)
    return _encode(value)


def decode_id(name: str) -> str:
    """The item id whose file-name form is ``name`` (the inverse of :func:`encode_id`).

    Args:
        name: a file name without its suffix, e.g. ``"S2A%2F2021"``.

    Returns:
        The item id, e.g. ``"S2A/2021"``.

    Raises:
        UnsafePathError: ``name`` is not something :func:`encode_id` writes (a stray
            file, or a name made by hand).
    """
    from urllib.parse import unquote

    decoded: str | None = None
    if _ENCODED.fullmatch(name):
        try:
            decoded = unquote(name, errors="strict")
        except UnicodeDecodeError:
            decoded = None
    if decoded is None or id_problem(decoded) is not None or _encode(decoded) != name:
        raise UnsafePathError(
            f"file name {name!r} is not an encoded item id; geofm names scene files by "
            "their item id with characters other than letters, digits, '.', '_' and '-' "
            "percent-encoded; rename or remove the file", value=name)
    return decoded


def _safe_problem(value: object, max_length: int) -> str | None:
    if not isinstance(value, str):
        return f"is not a string (got {type(value).__name__} {value!r})"
    if value == "":
        return "is empty"
    bad = sorted({ch for ch in value if ch not in SAFE_CHARS})
    if bad:
        return f"holds {''.join(bad)!r}, outside letters, digits, '.', '_', '-'"
    if value.startswith("."):
        return "starts with '.'"
    if len(value) > max_length:
        return f"is longer than {max_length} characters"
    return None


def tile_problem(value: object) -> str | None:
    """Why ``value`` cannot be a tile code, or ``None`` if it can.

    Args:
        value: the tile code after the ``MGRS-`` prefix is removed, e.g. ``"33UUP"``.

    Returns:
        A short reason or ``None``.
    """
    return _safe_problem(value, MAX_TILE_LENGTH)


def check_part(value: str, *, what: str) -> str:
    """Return ``value`` if it is a safe path part as it is (e.g. a chip id).

    Args:
        value: the would-be file or folder name.
        what: what it is, for the message (``"chip id"``).

    Raises:
        UnsafePathError: ``value`` is empty, starts with ``.``, holds a character outside
            :data:`SAFE_CHARS`, or is longer than :data:`MAX_PART_LENGTH`.
    """
    problem = _safe_problem(value, MAX_PART_LENGTH)
    if problem is not None:
        raise UnsafePathError(f"{what} {value!r} {problem}; it cannot be a file name in the "
                              "run root (chip ids are built from tile codes: fix the item's "
                              "grid code)", value=value)
    return value
