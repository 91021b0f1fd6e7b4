"""Read a ``torch.save`` file without running its code: the one owner of that job.

Every torch file geofm opens (encoder checkpoints, head checkpoints) goes through
:func:`load_torch_file`, which always uses torch's restricted unpickler
(``weights_only=True``). On top of torch's own allow-list (tensors, containers, numbers,
strings) it lets through, for the length of one load only, the plain value types that
Lightning / Clay checkpoints keep in ``hyper_parameters``: Lightning's ``AttributeDict``
(read as a plain ``dict``, so Lightning need not be installed), ``argparse.Namespace``
and ``pathlib`` paths (read as pure paths). Nothing that can call code is allowed. Any
other object in the file raises :class:`CheckpointError` naming the refused globals; the
only way to read such a file is the explicit ``geofm checkpoint convert --trust-pickle``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import pickletools
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from geofm.exceptions import CheckpointError

#: Where Lightning has defined ``AttributeDict`` (the class its ``hparams`` use).
ATTRIBUTE_DICT_PATHS = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)
#: ``pathlib`` classes as pickled by Python 3.11/3.12 (``pathlib``) and 3.13+
#: (``pathlib._local``), each read as the pure path of its flavour (no file access).
_PATH_PATHS = {
    f"{module}.{prefix}{flavour}Path": PurePosixPath if flavour == "Posix" else PureWindowsPath
    for module in ("pathlib", "pathlib._local")
    for prefix in ("", "Pure")
    for flavour in ("Posix", "Windows")
}
#: torch's own default allow-list entries outside ``torch.*`` (``_weights_only_unpickler``);
#: only used, if torch's private list cannot be read, to leave them out of the refused
#: names of a non-zip pickle.
_TORCH_DEFAULTS = frozenset({"collections.OrderedDict", "collections.Counter", "_codecs.encode",
                             "builtins.bytearray", "builtins.set", "builtins.complex"})
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
                         "SHORT_BINSTRING", "BINSTRING", "STRING"})


class _PlainDict(dict):  # type: ignore[type-arg]
    """Inert stand-in for Lightning's ``AttributeDict``: unpickles as a plain ``dict``.

    torch's restricted unpickler fills only exact ``dict`` objects with items, so
    ``__new__`` returns one; nothing else of the pickled class is kept.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> dict[Any, Any]:  # type: ignore[misc]
        return dict(*args, **kwargs)


def allowed_globals() -> list[Any]:
    """The extra globals :func:`load_torch_file` allows, in ``safe_globals`` form.

    Returns:
        Classes and ``(stand-in, "module.QualName")`` pairs: ``argparse.Namespace``,
        Lightning's ``AttributeDict`` (as :class:`_PlainDict`) and ``pathlib`` paths (as
        ``PurePosixPath`` / ``PureWindowsPath``). All are inert value containers.
    """
    entries: list[Any] = [argparse.Namespace]
    entries += [(_PlainDict, name) for name in ATTRIBUTE_DICT_PATHS]
    entries += [(cls, name) for name, cls in _PATH_PATHS.items()]
    return entries


def _scoped_globals() -> Any:
    """``torch.serialization.safe_globals`` for the entries not allowed already.

    The context removes what it added on exit, so entries a caller allowed globally
    before are left out of it (and stay allowed).
    """
    import torch

    present = set(torch.serialization.get_safe_globals())
    return torch.serialization.safe_globals([e for e in allowed_globals()
                                             if e not in present])


def _allowed_names() -> set[str]:
    return {e[1] if isinstance(e, tuple) else f"{e.__module__}.{e.__qualname__}"
            for e in allowed_globals()}


def _py3_name(module: str, name: str) -> str:
    """``module.name`` as Python 3 (and torch's unpickler) reads a protocol-2 GLOBAL."""
    from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING

    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _pickle_globals(path: Path, *, max_pickles: int = 5) -> list[str]:
    """Globals named by the pickles at the start of a non-zip file, read statically.

    A legacy ``torch.save`` file is five pickles in a row (magic number, protocol, system
    info, the object, storage keys) followed by raw storage bytes, which are not scanned;
    scanning also stops at the first thing that is not a pickle. Nothing is executed.
    """
    found: list[str] = []
    with open(path, "rb") as f:
        for _ in range(max_pickles):
            strings: list[str] = []
            memo: dict[int, Any] = {}
            last: Any = None
            try:
                for op, arg, _pos in pickletools.genops(f):
                    if op.name == "GLOBAL":
                        module, _, name = str(arg).partition(" ")
                        found.append(_py3_name(module, name))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    if op.name in _STRING_OPS:
                        last = str(arg)
                        strings.append(last)
                    elif op.name == "MEMOIZE":
                        memo[len(memo)] = last
                    elif op.name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int):
                        memo[arg] = last
                    elif op.name in ("GET", "BINGET", "LONG_BINGET") and isinstance(arg, int):
                        last = memo.get(arg)
                        if isinstance(last, str):
                            strings.append(last)
                    else:
                        last = None
            except Exception:  # the end of the pickles, or not a pickle
                break
    return list(dict.fromkeys(found))


def refused_globals(path: str | os.PathLike[str]) -> list[str]:
    """The globals in a torch file that :func:`load_torch_file` would refuse.

    Read statically (nothing is unpickled): ``torch.serialization.
    get_unsafe_globals_in_checkpoint`` for a zip checkpoint, a ``pickletools`` scan for
    a legacy file or a bare pickle.

    Returns:
        Sorted ``module.name`` strings; empty if none were found.
    """
    import torch

    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            with _scoped_globals():
                names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # a damaged zip: no names to report
            return []
    else:
        names = [n for n in _pickle_globals(path) if not _torch_allows(n)]
    return sorted(set(names))


def _torch_allows(name: str) -> bool:
    """Whether torch's default allow-list (or ours) has ``name`` (for messages only)."""
    if name in _allowed_names():
        return True
    try:  # private, but exact; the public get_unsafe_globals_in_checkpoint needs a zip
        from torch._weights_only_unpickler import _get_allowed_globals

        return name in _get_allowed_globals()
    except (ImportError, AttributeError, TypeError):
        return name in _TORCH_DEFAULTS or name.startswith("torch.")


#: First torch release whose ``weights_only=True`` loader has no known code-execution
#: bypass (CVE-2025-32434 affects every release before it).
SAFE_TORCH = (2, 6)


def _require_safe_torch(path: Path, *, what: str) -> None:
    """Refuse to unpickle anything on a torch whose restricted loader can be bypassed."""
    import torch

    release = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if release < SAFE_TORCH:
        raise CheckpointError(
            f"refusing to read {what} {str(path)!r} with torch {torch.__version__}: its "
            "weights_only loader can be made to run code (CVE-2025-32434); upgrade to "
            "torch>=2.6, or load a .safetensors file (which never unpickles)")


def load_torch_file(path: str | os.PathLike[str], *, what: str, fix_refused: str,
                    fix_unreadable: str) -> Any:
    """Unpickle a ``torch.save`` file with torch's restricted unpickler, never its code.

    Args:
        path: the file (zip or legacy ``torch.save`` format), read onto the CPU; zip files
            are memory-mapped, so only the tensors used are read into memory.
        what: what the file is, for messages, e.g. ``"checkpoint"``.
        fix_refused: what to do about a file with refused objects (a sentence).
        fix_unreadable: what to do about a corrupt or truncated file (a sentence).

    Returns:
        The unpickled object.

    Raises:
        CheckpointError: the file pickles objects outside the allow-list (the message
            names them and the file) or cannot be read (corrupt, truncated, not torch).
    """
    import torch

    path = Path(path)
    _require_safe_torch(path, what=what)
    try:
        with _scoped_globals():
            return torch.load(path, map_location="cpu", weights_only=True,
                              mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        refused = refused_globals(path)
        if refused:
            raise CheckpointError(
                f"{what} {str(path)!r} pickles {', '.join(refused)}, which the safe loader "
                "(torch weights_only=True) refuses: unpickling it could run code from the "
                f"file, and geofm never does that. {fix_refused}") from err
        reason = next((line.strip() for line in str(err).splitlines()
                       if "WeightsUnpickler error" in line), str(err).splitlines()[0]
                      if str(err) else "")
        raise CheckpointError(
            f"cannot read {what} {str(path)!r} (UnpicklingError: {reason}); the file is "
            f"corrupt, truncated or not a torch file. {fix_unreadable}") from err
    except Exception as err:  # any reader failure means an unusable file
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"cannot read {what} {str(path)!r} ({type(err).__name__}: {first}); the file "
            f"is corrupt, truncated or not a torch file. {fix_unreadable}") from err


def looks_like_torch_file(path: str | os.PathLike[str]) -> bool:
    """True if a file starts like a ``torch.save`` zip or a pickle, not like safetensors.

    A safetensors file starts with its header length (8 bytes, little endian) and the
    header's ``{``; that is checked first, since the length may begin with any byte.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size:
        return False
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (
        b"\x02", b"\x03", b"\x04", b"\x05"))
