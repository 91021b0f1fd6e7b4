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
