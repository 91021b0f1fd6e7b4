"""The geofm exception family.

Every error geofm raises on purpose derives from :class:`GeofmError` and from the
matching built-in (``ValueError``, ``FileNotFoundError``, ...), so callers can catch
either. Messages say what is wrong, name the offending value or file, and say how to
fix it.
"""

from __future__ import annotations

from typing import Any


class GeofmError(Exception):
    """Root of every error geofm raises on purpose.

    Subclasses carry what a caller needs as keyword fields (attributes), so no one parses
    the message. Every error pickles with its fields (DataLoader workers and process pools
    send exceptions between processes): :meth:`__reduce__` rebuilds the error from its
    ``args`` and attributes without running ``__init__`` again, so subclasses with
    keyword-only or computed constructor arguments need nothing of their own.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[GeofmError], args: tuple[object, ...],
             fields: dict[str, object]) -> GeofmError:
    """Unpickle a :class:`GeofmError`: its ``args`` and fields, no ``__init__``."""
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(fields)
    return err


class GeofmValueError(GeofmError, ValueError):
    """An argument or a value read from data is out of range or malformed.

    Attributes:
        name: the argument, option or field that is wrong (``None`` when not one).
        value: the offending value (``None`` when not given).
        allowed: the accepted values, when they are a fixed set (else empty).
    """

    def __init__(self, message: str, *, name: str | None = None, value: object = None,
                 allowed: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.name, self.value, self.allowed = name, value, tuple(allowed)


class GeofmTypeError(GeofmError, TypeError):
    """A value read from data or passed in has the wrong type.

    Attributes:
        value: the offending value.
    """

    def __init__(self, message: str, *, value: object = None) -> None:
        super().__init__(message)
        self.value = value


class GeofmKeyError(GeofmError, KeyError):
    """A name geofm looks up is unknown.

    Attributes:
        key: the unknown name.
    """

    def __init__(self, message: str, *, key: object = None) -> None:
        super().__init__(message)
        self.key = key

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class GeofmFileNotFoundError(GeofmError, FileNotFoundError):
    """A file or folder geofm needs does not exist."""


class GeofmFileExistsError(GeofmError, FileExistsError):
    """An output exists already and ``overwrite`` was not requested."""


class SensorError(GeofmKeyError):
    """Unknown sensor or band name (``key``)."""


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


class UnsafePathError(GeofmError, ValueError):
    """A value (item id, tile code, chip id) would make a path outside the run root.

    Attributes:
        value: the offending value.
    """

    def __init__(self, message: str, *, value: object = None) -> None:
        super().__init__(message)
        self.value = value


class CatalogError(GeofmError, ConnectionError):
    """A STAC API cannot be reached, or answers a search with an error.

    Attributes:
        url: the API's URL.
        status: the HTTP status of the API's error answer (``None``: no answer at all).
    """

    def __init__(self, message: str, *, url: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.url, self.status = url, status


class RasterError(GeofmError, OSError):
    """A raster (COG, NetCDF chip, label GeoTIFF) cannot be read or is inconsistent.

    Attributes:
        path: the file or URL (``None`` when not known).
        reason: why it cannot be opened, when known: ``"missing"`` (no such file, HTTP
            404), ``"denied"`` (HTTP 401/403, permissions, bad credentials),
            ``"unreachable"`` (no connection), ``"corrupt"`` (opened, not a readable
            raster); ``None`` for other errors.
        item: the STAC item id, for a scene's asset.
        asset: the asset key, for a scene's asset.
    """

    def __init__(self, message: str, *, path: str | None = None, reason: str | None = None,
                 item: str | None = None, asset: str | None = None) -> None:
        super().__init__(message)
        self.path, self.reason, self.item, self.asset = path, reason, item, asset


class TableError(GeofmError, OSError):
    """A Parquet table written by a stage cannot be read (truncated, not Parquet).

    Attributes:
        path: the file.
        made_by: the stage that writes it, to re-run with ``--overwrite``.
    """

    def __init__(self, message: str, *, path: object, made_by: str) -> None:
        super().__init__(message)
        self.path = path
        self.made_by = made_by


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


class GridError(GeofmValueError):
    """A pixel grid geofm cannot use (see :mod:`geofm.grid`).

    Rotated or south-up, off the chip grid's pixel corners, another pixel size or CRS.

    Attributes:
        transform: the offending affine coefficients ``(a, b, c, d, e, f)``, if any.
        path: the raster they belong to, if known.
    """

    def __init__(self, message: str, *, transform: tuple[float, ...] | None = None,
                 path: str | None = None) -> None:
        super().__init__(message)
        self.transform, self.path = transform, path


class ShapeError(GeofmError, ValueError):
    """An array has the wrong length along a named dimension.

    Attributes:
        dim: the dimension's name, e.g. ``"band"`` (``None`` when not one dimension).
        expected: the length (or shape) wanted, when known.
        got: the length (or shape) found, when known.
    """

    def __init__(self, message: str, *, dim: str | None = None, expected: object = None,
                 got: object = None) -> None:
        super().__init__(message)
        self.dim, self.expected, self.got = dim, expected, got


class SearchIndexError(GeofmError, LookupError):
    """A search index is empty, missing, or incompatible with the query."""


class StageFailedError(GeofmError, RuntimeError):
    """A stage finished but some of its units of work (scenes, chips) failed."""


class RootLockedError(GeofmError, RuntimeError):
    """Another process is writing into this run root (it holds ``ROOT/.geofm.lock``).

    Attributes:
        root: the run root.
        stage: what this process wanted to do there.
        holder: what the lock file says of the holder (``pid``, ``host``, ``stage``,
            ``since``, ``command``); empty if it has not written them yet.
    """

    def __init__(self, *, root: object, stage: str, holder: dict[str, object]) -> None:
        self.root = root
        self.stage = stage
        self.holder = dict(holder)
        if holder:
            who = (f"process {holder.get('pid')} on host {holder.get('host')} (stage "
                   f"{holder.get('stage')!r}, since {holder.get('since')})")
        else:
            who = "another process (it has not written its details yet)"
        super().__init__(
            f"run root {root} is being written by {who}; {stage} did not start. Wait for "
            f"it to finish, or stop it, then re-run; one writer per run root "
            f"(lock file {root}/.geofm.lock)")


class MissingExtraError(GeofmError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


class GenerationError(GeofmError, RuntimeError):
    """A language model call failed (credentials, access, endpoint, refusal, size).

    Attributes:
        provider: ``bedrock``, ``sagemaker`` or ``openai``.
        model: the model id, endpoint name or served model name.
        reason: a short code: ``credentials``, ``access_denied``, ``not_found``,
            ``refused``, ``throttled``, ``connection``, ``prompt_too_large``, ``bad_response``,
            ``config``.
        fix: what the user can do about it.
        partial: what was generated before the failure (a
            :class:`geofm.generative.Generation`), when the caller set it.
    """

    def __init__(self, message: str, *, provider: str, model: str | None, reason: str,
                 fix: str = "", partial: object = None) -> None:
        self.provider, self.model, self.reason, self.fix = provider, model, reason, fix
        self.partial = partial
        text = f"{provider} model {model!r}: {message}"
        super().__init__(f"{text}; {fix}" if fix else text)


class TemplateError(GeofmValueError):
    """A prompt template names a placeholder the results do not have.

    Attributes:
        template: the template text.
        placeholder: the offending placeholder.
        available: the placeholders that can be used.
    """

    def __init__(self, message: str, *, template: str, placeholder: str,
                 available: list[str]) -> None:
        self.template, self.placeholder, self.available = template, placeholder, available
        super().__init__(message)


class TrainingError(GeofmError, RuntimeError):
    """Training stopped: the loss became NaN or infinite.

    Attributes:
        epoch: the 1-based epoch it happened in.
        step: the 0-based optimiser step within that epoch.
        loss: the offending loss value.
        checkpoint: the last good checkpoint kept (``None`` if no epoch finished).
    """

    def __init__(self, message: str, *, epoch: int, step: int, loss: float,
                 checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.loss = loss
        self.checkpoint = checkpoint


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
