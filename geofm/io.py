"""File and URI helpers shared by every stage: atomic writes, href resolution, open errors."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REMOTE_SCHEMES = ("s3", "http", "https", "gs", "az")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file lives in the same folder (so the rename is atomic on POSIX) and
    keeps the suffix of ``path`` so writers that infer the format from it still work.
    On an exception the temporary file is removed and ``path`` is left untouched.

    Args:
        path: final destination.

    Yields:
        The temporary path to write to.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{final.suffix}",
                                    dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    A file that already holds exactly ``data`` is left alone (same bytes, same mtime), so
    re-running a finished stage changes no file.
    """
    target = Path(path)
    if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
        return target
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> Path:
    """Serialise ``obj`` as JSON (sorted keys, stable bytes) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True,
                                              default=str) + "\n")


def is_remote(href: str) -> bool:
    """Return True if ``href`` is a remote URI (``s3://``, ``https://``, ...)."""
    return urlparse(str(href)).scheme in REMOTE_SCHEMES


def resolve_href(href: str, base: str | os.PathLike[str] | None = None) -> str:
    """Turn a STAC asset href into something rasterio/GDAL can open.

    Relative hrefs are resolved against ``base`` (the folder of the item JSON, or the
    item's own href); ``file://`` URIs become local paths; remote URIs (``s3://``,
    ``https://``) are returned unchanged: rasterio opens them through GDAL's virtual
    file systems.

    Args:
        href: the asset href as written in the item.
        base: folder or file the href is relative to.

    Returns:
        A local path (as a string) or a remote URI.
    """
    href = str(href)
    if is_remote(href):
        return href
    parsed = urlparse(href)
    if parsed.scheme == "file":
        return parsed.path
    path = Path(href)
    if not path.is_absolute() and base is not None:
        base_path = Path(str(base).removeprefix("file://"))
        if base_path.suffix:  # a file: resolve against its folder
            base_path = base_path.parent
        path = base_path / path
    return os.path.normpath(str(path))


class StagedFiles:
    """Several files that must change together: staged in a folder, then committed at once.

    Write every file to :meth:`path` (a file in a hidden staging folder beside the
    targets), then call :meth:`commit`: it writes a ``COMMITTED`` marker listing the
    files (atomically) and renames each onto its target. A process killed before the
    marker leaves the targets untouched; one killed after it leaves the marker, and
    :meth:`recover` (call it, holding the root's lock, before reading the targets)
    finishes the renames. Either way a reader never sees a mix of two versions once
    ``recover`` has run. :meth:`remove` adds targets to delete in the same commit
    (before the renames, so a staged ``x/part.parquet`` can replace a file ``x``).

    Args:
        folder: the folder of the target files.
        name: the staging folder's name inside ``folder``.
    """

    MARKER = "COMMITTED"

    def __init__(self, folder: str | os.PathLike[str], *, name: str = ".pending") -> None:
        self.folder = Path(folder)
        self.staging = self.folder / name
        self.names: list[str] = []
        self.removed: list[str] = []

    def path(self, name: str) -> Path:
        """The staging path of target ``folder/name`` (``name`` may hold sub-folders)."""
        rel = self._check(name)
        if name not in self.names:
            self.names.append(name)
        out = self.staging / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        return out

    def remove(self, name: str) -> None:
        """Delete target file ``folder/name`` at :meth:`commit` (never a folder).

        ``name`` must not also be staged (:meth:`path`): a recovery repeats the deletions,
        and would then delete the staged file already renamed onto the target.
        """
        self._check(name)
        if name not in self.removed:
            self.removed.append(name)

    def _check(self, name: str) -> Path:
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or name == self.MARKER:
            from geofm.exceptions import GeofmValueError

            raise GeofmValueError(f"staged file name {name!r} must be a relative path inside "
                                  f"{self.folder} (and not {self.MARKER!r})")
        return rel

    def begin(self) -> StagedFiles:
        """Start a new group: recover any earlier one, then create an empty staging folder."""
        self.recover()
        self.staging.mkdir(parents=True, exist_ok=True)
        return self

    def commit(self) -> None:
        """Publish every staged file (marker first, then the deletions, then the renames)."""
        from geofm.exceptions import GeofmValueError

        present = [n for n in self.names if (self.staging / n).exists()]
        both = sorted(set(present) & set(self.removed))
        if both:
            raise GeofmValueError(f"{both} are both staged and removed in {self.folder}; "
                                  "stage a file or remove it, not both")
        write_json_atomic(self.staging / self.MARKER, {"rename": present,
                                                       "remove": self.removed})
        self._finish()

    def recover(self) -> bool:
        """Finish a committed group left by a killed process, or drop an uncommitted one.

        Returns:
            True if an interrupted commit was completed.
        """
        import shutil

        if not self.staging.exists():
            return False
        done = (self.staging / self.MARKER).exists()
        if done:
            self._finish()
        else:
            shutil.rmtree(self.staging)
        return done

    def _finish(self) -> None:
        import shutil

        with open(self.staging / self.MARKER, encoding="utf-8") as fh:
            marker = json.load(fh)
        # a list: the marker of a geofm without deletions
        names = marker if isinstance(marker, list) else marker["rename"]
        for name in [] if isinstance(marker, list) else marker["remove"]:
            target = self.folder / name
            if target.is_file() or target.is_symlink():  # absent: deleted before
                target.unlink()
        for name in names:
            src = self.staging / name
            if src.exists():  # absent: renamed before an interruption
                dst = self.folder / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                _replace(src, dst)
        shutil.rmtree(self.staging)


def _replace(src: Path, dst: Path) -> None:
    """``os.replace`` (its own function so tests can interrupt a commit between renames)."""
    os.replace(src, dst)


#: GDAL error numbers (``CPLErrorNum``) that rasterio's open errors carry (as ``errno`` of
#: the GDAL error the ``RasterioIOError`` was raised from).
_CPLE_OPEN_FAILED = 4
_CPLE_HTTP_RESPONSE = 11
_CPLE_AWS_OBJECT_NOT_FOUND = 13
_CPLE_AWS_DENIED = (14, 15, 16)  # access denied, invalid credentials, bad signature

#: Why an open failed (:attr:`geofm.exceptions.RasterError.reason`) -> what to do.
OPEN_FAILURE_FIX = {
    "missing": "file does not exist (HTTP 404 for a URL); download it or fix the asset href",
    "denied": ("access denied (HTTP 403/401): an expired or missing signature (Planetary "
               "Computer: sign again), missing credentials, or a requester-pays bucket "
               "(set AWS_REQUEST_PAYER=requester)"),
}


def open_failure(exc: BaseException, href: str) -> tuple[str, str]:
    """Why GDAL (through rasterio) could not open ``href``, and the fix.

    Classified by what the error is, not by its wording where GDAL says more than text: a
    local path is checked on disk (missing, unreadable); a remote one by the GDAL error
    number (S3 object not found, access denied) and the HTTP status of an HTTP error.
    GDAL gives that status, and whether a ``/vsis3/`` object exists, only inside its
    message; those two are read from it.

    Args:
        exc: the error ``rasterio.open`` raised (a ``RasterioIOError``).
        href: what was opened (local path or remote URI).

    Returns:
        ``(reason, explanation)``: reason is ``"missing"``, ``"denied"``, ``"unreachable"``
        or ``"corrupt"``; the explanation says what it means and how to fix it.
    """
    import re

    text = str(exc)
    gdal = exc.__cause__ or exc.__context__
    code = getattr(gdal, "errno", None)
    if not is_remote(href) and not str(href).startswith("/vsi"):
        if not os.path.exists(href):
            return "missing", OPEN_FAILURE_FIX["missing"]
        if not os.access(href, os.R_OK):
            return "denied", "permission denied; make the file readable or fix the asset href"
        return "corrupt", f"cannot open ({text}); the COG is truncated or corrupt: re-download it"
    status = re.search(r"response code: (\d{3})", text) if code == _CPLE_HTTP_RESPONSE else None
    if code == _CPLE_AWS_OBJECT_NOT_FOUND or (status and status[1] in ("404", "410")) or (
            code == _CPLE_OPEN_FAILED and "does not exist" in text):
        return "missing", OPEN_FAILURE_FIX["missing"]
    if code in _CPLE_AWS_DENIED or (status and status[1] in ("401", "403")):
        return "denied", OPEN_FAILURE_FIX["denied"]
    if code == _CPLE_HTTP_RESPONSE:  # no answer (CURL error) or a server error (5xx)
        return "unreachable", (f"cannot reach the server ({text[:160]}); check the network "
                               "and the URL, or raise GDAL_HTTP_TIMEOUT / GDAL_HTTP_MAX_RETRY")
    return "corrupt", f"cannot open ({text}); the COG is truncated or corrupt: re-download it"


#: Hosts of Planetary Computer's blob storage, whose hrefs need a SAS token to be read.
PLANETARY_COMPUTER_HOSTS = (".blob.core.windows.net",)


def readable_href(href: str) -> str:
    """``href`` ready for GDAL: Planetary Computer blob URLs get signed (SAS token).

    Raises:
        MissingExtraError: an unsigned Planetary Computer href and the
            ``planetary-computer`` package is not installed (the message names the extra).
    """
    parsed = urlparse(str(href))
    if not (parsed.scheme == "https" and parsed.netloc.endswith(PLANETARY_COMPUTER_HOSTS)
            and "sig=" not in parsed.query):
        return href
    try:
        import planetary_computer
    except ImportError:
        from geofm.exceptions import MissingExtraError

        raise MissingExtraError(
            f"{href} is a Planetary Computer asset and needs a SAS signature; install the "
            "signer with: pip install \"geofm[planetary-computer]\" (or sign the items with "
            "planetary_computer.sign before chipping)") from None
    return str(planetary_computer.sign(href))
