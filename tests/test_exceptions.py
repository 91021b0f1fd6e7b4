import pytest

from geofm.exceptions import (
    CheckpointError,
    GeofmError,
    GeofmFileNotFoundError,
    MissingExtraError,
    SensorError,
    require_extra,
)


@pytest.mark.parametrize(("cls", "builtin"), [
    (GeofmFileNotFoundError, FileNotFoundError), (CheckpointError, ValueError),
    (SensorError, KeyError), (MissingExtraError, ImportError)])
def test_family_inherits_builtins(cls, builtin):
    err = cls("message")
    assert isinstance(err, GeofmError) and isinstance(err, builtin)


def test_sensor_error_message_is_not_quoted():
    assert str(SensorError("unknown band 'x'")) == "unknown band 'x'"


def test_require_extra_names_the_install_command():
    require_extra("json", "dev")
    with pytest.raises(MissingExtraError, match=r'pip install "geofm\[sagemaker\]"'):
        require_extra("no_such_module_xyz", "sagemaker")


def test_generation_and_template_errors_carry_fields():
    from geofm.exceptions import GenerationError, TemplateError

    err = GenerationError("access denied", provider="bedrock", model="m1",
                          reason="access_denied", fix="enable model access")
    assert isinstance(err, GeofmError) and isinstance(err, RuntimeError)
    assert (err.provider, err.model, err.reason) == ("bedrock", "m1", "access_denied")
    assert str(err) == "bedrock model 'm1': access denied; enable model access"
    terr = TemplateError("bad", template="{x}", placeholder="x", available=["chip_id"])
    assert isinstance(terr, ValueError) and terr.available == ["chip_id"]


def _every_error():
    """One instance of every class in the family, fields set to recognisable values."""
    from geofm import exceptions as E

    return [
        E.GeofmError("m"), E.GeofmValueError("m", name="pool", value="max", allowed=("cls",)),
        E.GeofmTypeError("m", value=3), E.GeofmKeyError("m", key="x"),
        E.GeofmFileNotFoundError("m"), E.GeofmFileExistsError("m"),
        E.SensorError("m", key="swir"),
        E.ItemError("m", item="i", path="p", field="f", asset="a"),
        E.UnsafePathError("m", value="../x"), E.CatalogError("m", url="https://x", status=502),
        E.RasterError("m", path="p", reason="missing", item="i", asset="red"),
        E.TableError("m", path="p", made_by="chip"), E.CheckpointError("m"),
        E.ModelMismatchError("m", paths=("a", "b"), fields=("dim",)),
        E.ShapeError("m", dim="band", expected=4, got=3),
        E.GridError("m", transform=(10.0, 0.0, 0.0, 0.0, -10.0, 0.0), path="a.tif"),
        E.SearchIndexError("m"),
        E.StageFailedError("m"), E.RootLockedError(root="/r", stage="chip", holder={"pid": 1}),
        E.MissingExtraError("m"),
        E.GenerationError("m", provider="bedrock", model="x", reason="refused", fix="f"),
        E.TemplateError("m", template="{a}", placeholder="a", available=["b"]),
        E.TrainingError("m", epoch=2, step=3, loss=float("inf"), checkpoint="c.pt"),
    ]


def _same(a, b):
    return (type(a) is type(b) and str(a) == str(b) and a.args == b.args
            and vars(a) == vars(b))


def test_every_error_of_the_family_is_listed():
    """A new class must join ``_every_error`` (so the pickling tests cover it)."""
    from geofm import exceptions as E

    family = {c for c in vars(E).values() if isinstance(c, type) and issubclass(c, GeofmError)}
    assert family == {type(e) for e in _every_error()}


@pytest.mark.parametrize("err", _every_error(), ids=lambda e: type(e).__name__)
def test_errors_pickle_with_their_fields(err):
    import copy
    import pickle

    back = pickle.loads(pickle.dumps(err))
    assert _same(back, err), (vars(back), vars(err))
    assert _same(copy.deepcopy(err), err)


def _raise(index):
    raise _every_error()[index]


def test_errors_cross_processes_with_their_fields():
    """A worker process's error reaches the parent with its class, message and fields."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    errors = _every_error()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_raise, i) for i in range(len(errors))]
        for future, err in zip(futures, errors, strict=True):
            back = future.exception()
            assert _same(back, err), type(err).__name__


def test_new_builtin_kinds_keep_their_builtins():
    from geofm.exceptions import GeofmKeyError, GeofmTypeError, GeofmValueError

    assert isinstance(GeofmTypeError("m"), TypeError)
    assert isinstance(GeofmKeyError("m"), KeyError) and str(GeofmKeyError("a 'b'")) == "a 'b'"
    err = GeofmValueError("pool must be 'cls'", name="pool", value="max", allowed=["cls"])
    assert isinstance(err, ValueError) and err.allowed == ("cls",)
