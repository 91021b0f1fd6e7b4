"""Providers at their boundary: botocore Stubber on real clients, a real local HTTP server."""

import io
import json
import socket

import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from geofm.exceptions import GenerationError, GeofmValueError
from geofm.generative.providers import (
    AWS_MAX_ATTEMPTS,
    BedrockProvider,
    ImagePart,
    OpenAIProvider,
    Prompt,
    SageMakerProvider,
    _aws_client,
    make_provider,
)

from .conftest import png_bytes, prompt_text

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


@pytest.fixture
def aws_env(tmp_path, monkeypatch):
    """No AWS configuration, credentials or instance metadata: nothing leaves the machine."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _client(service):
    return _aws_client(service, region="eu-central-1", profile=None, provider="x", model="m")


def _converse_response(text, stop="end_turn"):
    return {"output": {"message": {"role": "assistant", "content": [{"text": text}]}},
            "stopReason": stop, "usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5},
            "metrics": {"latencyMs": 10}}


def test_aws_clients_use_adaptive_retries(aws_env):
    client = _client("bedrock-runtime")
    assert client.meta.config.retries == {"mode": "adaptive",
                                         "total_max_attempts": AWS_MAX_ATTEMPTS}
    assert client.meta.region_name == "eu-central-1"


def test_bedrock_converse_request_with_text_and_images(aws_env):
    client = _client("bedrock-runtime")
    img = png_bytes(3)
    prompt = Prompt(["Describe this chip:", ImagePart(img, "c1"), "and this one:",
                     ImagePart(png_bytes(4), "c2")])
    expected = {"modelId": MODEL, "messages": [{"role": "user", "content": [
        {"text": "Describe this chip:"},
        {"image": {"format": "png", "source": {"bytes": img}}},
        {"text": "and this one:"},
        {"image": {"format": "png", "source": {"bytes": png_bytes(4)}}}]}],
        "inferenceConfig": {"maxTokens": 200, "temperature": 0.2}}
    provider = BedrockProvider(model=MODEL, temperature=0.2, max_tokens=200, client=client)
    with Stubber(client) as stub:
        stub.add_response("converse", _converse_response("  a forest  "), expected)
        assert provider.generate(prompt) == "a forest"
        stub.assert_no_pending_responses()


def test_bedrock_text_only_without_temperature(aws_env):
    client = _client("bedrock-runtime")
    provider = make_provider("bedrock", model=MODEL, client=client)
    expected = {"modelId": MODEL, "messages": [{"role": "user", "content": [{"text": "hi"}]}],
                "inferenceConfig": {"maxTokens": 512}}
    with Stubber(client) as stub:
        stub.add_response("converse", _converse_response("hello"), expected)
        assert provider.generate(Prompt(["hi"])) == "hello"


@pytest.mark.parametrize(("code", "message", "reason", "fix"), [
    ("AccessDeniedException", "You don't have access to the model with the specified model ID.",
     "access_denied", "enable access to " + MODEL + " in the Bedrock console"),
    ("ValidationException", "The provided model identifier is invalid.", "not_found",
     "aws bedrock list-foundation-models --region eu-central-1"),
    ("ResourceNotFoundException", "Model not found", "not_found", "list-foundation-models"),
    ("ThrottlingException", "Too many requests", "throttled", "higher quota"),
    ("ValidationException", "max_tokens: range: 1..4096", "refused", "--max-tokens"),
])
def test_bedrock_client_errors(aws_env, code, message, reason, fix):
    client = _client("bedrock-runtime")
    provider = BedrockProvider(model=MODEL, client=client)
    with Stubber(client) as stub:
        stub.add_client_error("converse", service_error_code=code, service_message=message,
                              http_status_code=400)
        with pytest.raises(GenerationError) as info:
            provider.generate(Prompt(["hi"]))
    err = info.value
    assert (err.provider, err.model, err.reason) == ("bedrock", MODEL, reason)
    assert fix in str(err) and code in str(err) and str(err).startswith(f"bedrock model {MODEL!r}")


def test_bedrock_guardrail_is_a_refusal(aws_env):
    client = _client("bedrock-runtime")
    provider = BedrockProvider(model=MODEL, client=client)
    with Stubber(client) as stub:
        stub.add_response("converse", _converse_response("blocked", stop="guardrail_intervened"))
        with pytest.raises(GenerationError, match="refused the request") as info:
            provider.generate(Prompt(["hi"]))
    assert info.value.reason == "refused"


def test_bedrock_missing_credentials(aws_env):
    provider = BedrockProvider(model=MODEL, region="eu-central-1")
    with pytest.raises(GenerationError, match="no AWS credentials found.*aws configure") as info:
        provider.generate(Prompt(["hi"]))
    assert (info.value.provider, info.value.reason) == ("bedrock", "credentials")


def test_bedrock_unknown_profile(aws_env):
    provider = BedrockProvider(model=MODEL, profile="nope")
    with pytest.raises(GenerationError, match="AWS profile 'nope' not found"):
        provider.generate(Prompt(["hi"]))


def _body(obj):
    data = json.dumps(obj).encode()
    return {"Body": StreamingBody(io.BytesIO(data), len(data)), "ContentType": "application/json"}


def test_sagemaker_tgi_request_and_response(aws_env):
    client = _client("sagemaker-runtime")
    provider = SageMakerProvider(endpoint="llm-ep", temperature=0.5, max_tokens=64, client=client)
    body = {"inputs": "Describe it", "parameters": {"max_new_tokens": 64,
                                                    "return_full_text": False,
                                                    "temperature": 0.5}}
    expected = {"EndpointName": "llm-ep", "ContentType": "application/json",
                "Accept": "application/json", "Body": json.dumps(body).encode()}
    with Stubber(client) as stub:
        stub.add_response("invoke_endpoint", _body([{"generated_text": " fields "}]), expected)
        assert provider.generate(Prompt(["Describe it"])) == "fields"


def test_sagemaker_messages_format_carries_images(aws_env):
    import base64

    client = _client("sagemaker-runtime")
    provider = make_provider("sagemaker", endpoint="vlm", model="qwen",
                             sagemaker_format="messages", client=client)
    img = png_bytes(1)
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url",
         "image_url": {"url": "data:image/png;base64," + base64.b64encode(img).decode()}}]}],
        "max_tokens": 512, "model": "qwen"}
    expected = {"EndpointName": "vlm", "ContentType": "application/json",
                "Accept": "application/json", "Body": json.dumps(body).encode()}
    with Stubber(client) as stub:
        stub.add_response("invoke_endpoint",
                          _body({"choices": [{"message": {"content": "a lake"}}]}), expected)
        assert provider.generate(Prompt(["What is it?", ImagePart(img, "c")])) == "a lake"


def test_sagemaker_unknown_endpoint(aws_env):
    client = _client("sagemaker-runtime")
    provider = SageMakerProvider(endpoint="gone", client=client)
    with Stubber(client) as stub:
        stub.add_client_error(
            "invoke_endpoint", service_error_code="ValidationException",
            service_message="Endpoint gone of account 123456789012 not found.",
            http_status_code=400)
        with pytest.raises(GenerationError, match="sagemaker list-endpoints") as info:
            provider.generate(Prompt(["x"]))
    assert (info.value.provider, info.value.model, info.value.reason) == (
        "sagemaker", "gone", "not_found")


def test_sagemaker_container_error_and_bad_format(aws_env):
    client = _client("sagemaker-runtime")
    provider = SageMakerProvider(endpoint="ep", client=client)
    with Stubber(client) as stub:
        stub.add_client_error("invoke_endpoint", service_error_code="ModelError",
                              service_message="Received client error (422)",
                              http_status_code=424)
        stub.add_response("invoke_endpoint", _body({"choices": []}))
        with pytest.raises(GenerationError, match="request refused") as info:
            provider.generate(Prompt(["x"]))
        assert info.value.reason == "refused"
        with pytest.raises(GenerationError, match="--sagemaker-format") as info:
            provider.generate(Prompt(["x"]))
        assert info.value.reason == "bad_response"


def test_sagemaker_tgi_refuses_images_before_calling(aws_env):
    provider = SageMakerProvider(endpoint="ep", client=_client("sagemaker-runtime"))
    with pytest.raises(GenerationError, match="carries no images"):
        provider.generate(Prompt(["x", ImagePart(png_bytes(0))]))


def test_openai_request_headers_and_key_from_env(server, monkeypatch):
    monkeypatch.setenv("GEOFM_OPENAI_API_KEY", "sk-test")
    provider = make_provider("openai", base_url=server.base_url + "/", model="m1",
                             temperature=0.0, max_tokens=32)
    assert provider.generate(Prompt(["hello"])) == "ANSWER to: hello"
    seen = server.requests[0]
    assert seen["headers"]["Authorization"] == "Bearer sk-test"
    assert seen["body"] == {"model": "m1", "messages": [{"role": "user", "content": "hello"}],
                            "max_tokens": 32, "temperature": 0.0}


def test_openai_no_key_sends_no_authorization(server, monkeypatch):
    monkeypatch.delenv("GEOFM_OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    OpenAIProvider(base_url=server.base_url, model="m").generate(Prompt(["x"]))
    assert "Authorization" not in server.requests[0]["headers"]


def test_openai_retries_throttling_then_succeeds(server):
    replies = iter([(429, {"error": "slow down"}, {"Retry-After": "0"}),
                    (503, {"error": "busy"}, {})])

    def reply(body):
        return next(replies, None) or (200, {"choices": [{"message": {"content": "ok"}}]}, {})

    server.reply = reply
    provider = OpenAIProvider(base_url=server.base_url, model="m", backoff=0.01)
    assert provider.generate(Prompt(["x"])) == "ok"
    assert len(server.requests) == 3


def test_openai_retries_are_bounded(server):
    server.reply = lambda body: (429, {"error": "quota"}, {})
    provider = OpenAIProvider(base_url=server.base_url, model="m", retries=2, backoff=0.01)
    with pytest.raises(GenerationError, match=r"throttled \(HTTP 429\) after 3 attempts") as info:
        provider.generate(Prompt(["x"]))
    assert info.value.reason == "throttled" and len(server.requests) == 3


@pytest.mark.parametrize(("status", "reason", "fix"), [
    (401, "credentials", "$GEOFM_OPENAI_API_KEY"),
    (404, "not_found", "--generative-model"),
    (400, "refused", "--max-tokens"),
])
def test_openai_http_errors(server, status, reason, fix):
    server.reply = lambda body: (status, {"error": {"message": "nope"}}, {})
    provider = OpenAIProvider(base_url=server.base_url, model="m", retries=0)
    with pytest.raises(GenerationError) as info:
        provider.generate(Prompt(["x"]))
    assert (info.value.provider, info.value.model, info.value.reason) == ("openai", "m", reason)
    assert fix in str(info.value) and "nope" in str(info.value)
    assert len(server.requests) == 1


def test_openai_content_filter_is_a_refusal(server):
    server.reply = lambda body: (200, {"choices": [{"finish_reason": "content_filter",
                                                    "message": {"content": None}}]}, {})
    with pytest.raises(GenerationError, match="refused") as info:
        OpenAIProvider(base_url=server.base_url, model="m").generate(Prompt(["x"]))
    assert info.value.reason == "refused"


def test_openai_connection_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAIProvider(base_url=f"http://127.0.0.1:{port}/v1", model="m")
    with pytest.raises(GenerationError, match="cannot connect to .*start the server") as info:
        provider.generate(Prompt(["x"]))
    assert info.value.reason == "connection"


def test_openai_images_as_data_urls(server):
    provider = OpenAIProvider(base_url=server.base_url, model="m")
    provider.generate(Prompt(["look:", ImagePart(png_bytes(2), "c")]))
    content = server.requests[0]["body"]["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "look:"}
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")
    assert prompt_text(server.requests[0]["body"]) == "look:"


def test_make_provider_checks_options():
    with pytest.raises(GeofmValueError, match="needs --generative-model ID"):
        make_provider("bedrock")
    with pytest.raises(GeofmValueError, match="needs --generative-endpoint NAME"):
        make_provider("sagemaker", model="x")
    with pytest.raises(GeofmValueError, match="needs --generative-model NAME"):
        make_provider("openai", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(GeofmValueError, match="must start with http"):
        make_provider("openai", base_url="127.0.0.1:1/v1", model="m")
    with pytest.raises(GeofmValueError, match="temperature must be in 0..2"):
        make_provider("bedrock", model="m", temperature=5)
    with pytest.raises(GeofmValueError, match="not one of bedrock, sagemaker, openai"):
        make_provider("vertex", model="m")
    with pytest.raises(GeofmValueError, match="not a PNG"):
        ImagePart(b"GIF89a", "x")


def test_missing_extra_names_the_install(monkeypatch):
    import sys

    from geofm.exceptions import MissingExtraError

    monkeypatch.setitem(sys.modules, "boto3", None)  # as if boto3 were not installed
    with pytest.raises(MissingExtraError, match=r'pip install "geofm\[generative\]"'):
        BedrockProvider(model=MODEL).generate(Prompt(["hi"]))


def test_api_key_is_not_in_the_repr(monkeypatch):
    monkeypatch.setenv("GEOFM_OPENAI_API_KEY", "sk-secret")
    provider = OpenAIProvider(base_url="http://127.0.0.1:1/v1", model="m")
    assert provider.api_key == "sk-secret" and "sk-secret" not in repr(provider)
