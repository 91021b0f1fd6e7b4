"""The geofm exception family.

Every error geofm raises on purpose derives from :class:`GeofmError` and from the
matching built-in (``ValueError``, ``FileNotFoundError``, ...), so callers can catch
either. Messages say what is wrong, name the offending value or file, and say how to
fix it.
"""

from __future__ import annotations


class GeofmError(Exception):
    """Root of every error geofm raises on purpose."""


class GeofmValueError(GeofmError, ValueError):
    """An argument or a value read from data is out of range or malformed."""


class GeofmFileNotFoundError(GeofmError, FileNotFoundError):
    """A file or folder geofm needs does not exist."""


class GeofmFileExistsError(GeofmError, FileExistsError):
    """An output exists already and ``overwrite`` was not requested."""


class SensorError(GeofmError, KeyError):
    """Unknown sensor or band name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class ItemError(GeofmError, ValueError):
    """A STAC item is unusable: missing asset, missing CRS, unreadable raster."""


class RasterError(GeofmError, OSError):
    """A raster (COG, NetCDF chip, label GeoTIFF) cannot be read or is inconsistent."""


class CheckpointError(GeofmError, ValueError):
    """A model checkpoint is missing, corrupt, or of another architecture."""


class ModelMismatchError(GeofmValueError):
    """Vectors of different models were to be used together (analysed, indexed).

    Attributes:
        paths: the two files whose models differ.
        fields: the :class:`~geofm.model.identity.ModelIdentity` fields that differ.
    """

    def __init__(self, message: str, *, paths: tuple[str, str] = ("", ""),
                 fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.paths = paths
        self.fields = fields


class ShapeError(GeofmError, ValueError):
    """An array has the wrong length along a named dimension."""


class SearchIndexError(GeofmError, LookupError):
    """A search index is empty, missing, or incompatible with the query."""


class StageFailedError(GeofmError, RuntimeError):
    """A stage finished but some of its units of work (scenes, chips) failed."""


class MissingExtraError(GeofmError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


class GeofmWarning(UserWarning):
    """Warnings geofm emits (random weights, skipped inputs); errors in tests."""


def require_extra(module: str, extra: str) -> None:
    """Raise :class:`MissingExtraError` if ``module`` cannot be imported.

    Args:
        module: importable module name, e.g. ``"sagemaker"``.
        extra: the geofm extra that installs it, e.g. ``"sagemaker"``.
    """
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(
            f"{module!r} is not installed; install it with: pip install \"geofm[{extra}]\""
        )
