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
    """A STAC item is unusable: missing asset, missing CRS, malformed field, unsafe id.

    Attributes:
        item: the item id (``None`` when the item has none, or the file was unreadable).
        path: the file the item was read from (or the failing asset's href).
        field: the offending field, e.g. ``"id"``, ``"properties.datetime"``,
            ``"assets.red.href"`` (``None`` when not one field).
        asset: the asset key involved, if any.
    """

    def __init__(self, message: str, *, item: str | None = None, path: str | None = None,
                 field: str | None = None, asset: str | None = None) -> None:
        super().__init__(message)
        self.item, self.path, self.field, self.asset = item, path, field, asset

    def __reduce__(self):  # type: ignore[no-untyped-def]  # keep the fields across pickling
        return (self.__class__, self.args, self.__dict__)


class UnsafePathError(GeofmError, ValueError):
    """A value (item id, tile code, chip id) would make a path outside the run root.

    Attributes:
        value: the offending value.
    """

    def __init__(self, message: str, *, value: object = None) -> None:
        super().__init__(message)
        self.value = value

    def __reduce__(self):  # type: ignore[no-untyped-def]  # keep the fields across pickling
        return (self.__class__, self.args, self.__dict__)


class CatalogError(GeofmError, ConnectionError):
    """A STAC API cannot be reached, or answers a search with an error.

    Attributes:
        url: the API's URL.
    """

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url

    def __reduce__(self):  # type: ignore[no-untyped-def]  # keep the fields across pickling
        return (self.__class__, self.args, self.__dict__)


class RasterError(GeofmError, OSError):
    """A raster (COG, NetCDF chip, label GeoTIFF) cannot be read or is inconsistent."""


class CheckpointError(GeofmError, ValueError):
    """A model checkpoint is missing, corrupt, or of another architecture."""


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
