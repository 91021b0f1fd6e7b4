"""Reading the Parquet tables the stages write, with one error for a broken file.

Every stage that reads another stage's Parquet output (``meta/`` from chip,
``embeddings/`` from embed, ``analysis/`` from analyze) goes through these functions. A
file that is truncated (a killed write on a file system without atomic rename, a
partial copy), is not Parquet, or lacks a column becomes a
:class:`~geofm.exceptions.TableError` that names the file and the stage to re-run with
``--overwrite``, instead of a pyarrow traceback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from geofm.exceptions import GeofmFileNotFoundError, TableError

if TYPE_CHECKING:
    import geopandas as gpd
    import pyarrow as pa


@contextlib.contextmanager
def _reading(path: str | os.PathLike[str], made_by: str) -> Iterator[None]:
    import pyarrow as pa

    fix = f"re-run `geofm {made_by}` on this run root with --overwrite to rewrite it"
    try:
        yield
    except FileNotFoundError:
        raise GeofmFileNotFoundError(f"{os.fspath(path)} does not exist; {fix}") from None
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise TableError(
            f"{os.fspath(path)} cannot be read as Parquet ({type(exc).__name__}: {reason}); it "
            f"is probably truncated or was not written by `geofm {made_by}`: {fix}",
            path=path, made_by=made_by) from exc


def read_table(path: str | os.PathLike[str], *, made_by: str,
               columns: Sequence[str] | None = None) -> pa.Table:
    """Read a stage's Parquet file (all columns or ``columns``) as an Arrow table.

    Args:
        path: the Parquet file, or a folder of Parquet parts read as one table.
        made_by: the stage that writes it (``chip``, ``embed``, ``analyze``, ``index``);
            named in the error's fix.
        columns: columns to read; None reads all.

    Raises:
        TableError: the file is truncated, not Parquet, or lacks a column.
        GeofmFileNotFoundError: the file does not exist.
    """
    import pyarrow.parquet as pq

    with _reading(path, made_by):
        return pq.read_table(path, columns=None if columns is None else list(columns))


def iter_row_groups(path: str | os.PathLike[str], *, made_by: str,
                    columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """A stage's Parquet file, one row group at a time (as :func:`read_table` tables).

    Memory is one row group's columns, not the file's.

    Raises:
        TableError: the file is truncated, not Parquet, or lacks a column.
        GeofmFileNotFoundError: the file does not exist.
    """
    import pyarrow.parquet as pq

    with _reading(path, made_by):
        pf = pq.ParquetFile(path)
        for i in range(pf.num_row_groups):
            yield pf.read_row_group(i, columns=None if columns is None else list(columns))


def iter_row_group_batches(path: str | os.PathLike[str], *, made_by: str, column: str,
                           batch_size: int, max_prebuffer: int = 64 << 20,
                           buffer_size: int = 8 << 20) -> Iterator[pa.Array | pa.ChunkedArray]:
    """Stream one column of a stage's Parquet file, row group by row group.

    Each row group is read in batches of at most ``batch_size`` rows (a batch never
    spans two row groups). Where the column's largest chunk (one row group's worth,
    compressed) is at most ``max_prebuffer`` bytes, each chunk is read whole first
    (pyarrow's ``pre_buffer``: the fewest reads, the least CPU); otherwise through a
    read buffer of ``buffer_size`` bytes. Memory: a batch plus one chunk or the buffer,
    not the file.

    Yields:
        The column's values of each batch, in row order.

    Raises:
        TableError: the file is truncated, not Parquet, or lacks the column.
        GeofmFileNotFoundError: the file does not exist.
    """
    import pyarrow.parquet as pq

    with _reading(path, made_by):
        meta = pq.read_metadata(path)
        if column not in meta.schema.to_arrow_schema().names:
            raise KeyError(f"no column {column!r}")
        leaves = [i for i in range(meta.num_columns)
                  if meta.schema.column(i).path.split(".")[0] == column]
        largest = max((meta.row_group(g).column(i).total_compressed_size
                       for g in range(meta.num_row_groups) for i in leaves), default=0)
        whole = largest <= max_prebuffer
        with pq.ParquetFile(path, metadata=meta, pre_buffer=whole,
                            buffer_size=0 if whole else buffer_size) as source:
            for group in range(source.num_row_groups):
                for batch in source.iter_batches(batch_size=batch_size, row_groups=[group],
                                                 columns=[column], use_threads=False):
                    yield batch.column(0)


def read_metadata(path: str | os.PathLike[str], *, made_by: str) -> Any:
    """The Parquet footer (``pyarrow.parquet.FileMetaData``: rows, row groups) of a file.

    Raises:
        TableError: the file is truncated or not Parquet.
        GeofmFileNotFoundError: the file does not exist.
    """
    import pyarrow.parquet as pq

    with _reading(path, made_by):
        return pq.read_metadata(path)


def read_schema(path: str | os.PathLike[str], *, made_by: str) -> pa.Schema:
    """The Arrow schema (with its metadata) of a stage's Parquet file or dataset folder.

    For a folder of parts (``analysis/timeseries.parquet``): the first part's schema
    (every part has the same columns).

    Raises:
        TableError: the file is truncated or not Parquet.
        GeofmFileNotFoundError: the file does not exist (or the folder has no part).
    """
    import pyarrow.parquet as pq

    if os.path.isdir(path):
        parts = sorted(n for n in os.listdir(path) if n.endswith(".parquet")
                       and not n.startswith((".", "_")))
        if not parts:
            raise GeofmFileNotFoundError(f"{os.fspath(path)} holds no Parquet part; re-run "
                                         f"`geofm {made_by}` on this run root with --overwrite")
        path = os.path.join(path, parts[0])
    with _reading(path, made_by):
        return pq.read_schema(path)


def read_geoframe(path: str | os.PathLike[str], *, made_by: str,
                  columns: Sequence[str] | None = None) -> gpd.GeoDataFrame:
    """Read a stage's GeoParquet file (e.g. ``meta/<scene_id>.parquet``) as a GeoDataFrame.

    Raises:
        TableError: the file is truncated, not GeoParquet, or lacks a column.
        GeofmFileNotFoundError: the file does not exist.
    """
    import geopandas as gpd

    with _reading(path, made_by):
        frame: Any = gpd.read_parquet(path, columns=None if columns is None else list(columns))
        return frame
