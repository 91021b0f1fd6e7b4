"""Language-model providers behind one small interface: :class:`Provider`.

Three providers, each turning a :class:`Prompt` (text and PNG images, in order) into
one user message and returning the model's text:

- :class:`BedrockProvider`: Amazon Bedrock's Converse API (``bedrock-runtime``
  ``converse``); images are ``image`` content blocks (PNG bytes). Region and profile
  come from the usual AWS configuration unless given. Throttling is retried by botocore's
  ``adaptive`` retry mode (:data:`AWS_MAX_ATTEMPTS` attempts in all, with client-side
  rate limiting).
- :class:`SageMakerProvider`: a SageMaker real-time endpoint (``sagemaker-runtime``
  ``invoke_endpoint``). Request/response formats (:data:`SAGEMAKER_FORMATS`):

  ``tgi`` (Hugging Face TGI and DJL/LMI containers, the default)::

      request:  {"inputs": "<text>", "parameters": {"max_new_tokens": N,
                 "temperature": T, "return_full_text": false}}
      response: [{"generated_text": "..."}]  or  {"generated_text": "..."}

  ``messages`` (containers with an OpenAI-style chat route, e.g. LMI/vLLM, TGI
  Messages API)::

      request:  {"messages": [{"role": "user", "content": ...}], "max_tokens": N,
                 "temperature": T}
      response: {"choices": [{"message": {"content": "..."}}]}

  ``tgi`` carries no images. Other containers: pass ``build_request`` /
  ``parse_response`` callables.
- :class:`OpenAIProvider`: any OpenAI-compatible ``POST {base_url}/chat/completions``
  (vLLM, Ollama, hosted endpoints) over the standard library's ``urllib``; the API key
  is read from ``$GEOFM_OPENAI_API_KEY`` or ``$OPENAI_API_KEY`` (none is sent when
  neither is set, as local servers need none). HTTP 429 and 5xx are retried with
  exponential backoff (``retries`` times, ``backoff * 2**attempt`` seconds, capped at
  :data:`MAX_BACKOFF_S`, or the server's ``Retry-After``).

Every failure is a :class:`~geofm.exceptions.GenerationError` naming the provider,
the model and the fix.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from geofm.exceptions import GenerationError, GeofmValueError, require_extra

__all__ = ["ImagePart", "Prompt", "Provider", "BedrockProvider", "SageMakerProvider",
           "OpenAIProvider", "make_provider", "PROVIDERS", "SAGEMAKER_FORMATS"]

PROVIDERS = ("bedrock", "sagemaker", "openai")
SAGEMAKER_FORMATS = ("tgi", "messages")
#: default limit on generated tokens.
DEFAULT_MAX_TOKENS = 512
#: total attempts (first call + retries) of botocore's adaptive retry mode.
AWS_MAX_ATTEMPTS = 8
#: environment variables searched, in order, for the OpenAI-compatible API key.
API_KEY_ENVS = ("GEOFM_OPENAI_API_KEY", "OPENAI_API_KEY")
#: longest single wait between HTTP retries, seconds.
MAX_BACKOFF_S = 30.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImagePart:
    """One PNG image in a prompt.

    Attributes:
        png: the PNG file's bytes (an RGB chip thumbnail).
        label: what it shows (chip id, date), for logs and errors.
    """

    png: bytes
    label: str = ""

    def __post_init__(self) -> None:
        if not self.png.startswith(PNG_MAGIC):
            raise GeofmValueError(f"image {self.label!r} is not a PNG file; thumbnails "
                                  "written by `geofm chip` are PNGs")


@dataclass
class Prompt:
    """A user message: text and images in order.

    Attributes:
        parts: text strings and :class:`ImagePart` images, in reading order.
    """

    parts: list[str | ImagePart] = field(default_factory=list)

    @property
    def text(self) -> str:
        """All text parts joined (what the size accounting counts)."""
        return "".join(p for p in self.parts if isinstance(p, str))

    @property
    def images(self) -> list[ImagePart]:
        """The image parts, in order."""
        return [p for p in self.parts if isinstance(p, ImagePart)]


class Provider(Protocol):
    """Anything that turns a prompt into text.

    ``name`` is ``bedrock``, ``sagemaker`` or ``openai``; ``model`` the model id,
    endpoint name or served model name (both for errors and records).
    """

    @property
    def name(self) -> str:
        """Provider name."""
        ...

    @property
    def model(self) -> str:
        """Model id, endpoint name or served model name."""
        ...

    def generate(self, prompt: Prompt) -> str:
        """Return the model's answer to ``prompt``; raise ``GenerationError``."""
        ...


def _openai_content(prompt: Prompt) -> str | list[dict[str, Any]]:
    """OpenAI chat ``content``: a plain string without images, parts with them."""
    if not prompt.images:
        return prompt.text
    content: list[dict[str, Any]] = []
    for part in prompt.parts:
        if isinstance(part, str):
            content.append({"type": "text", "text": part})
        else:
            data = base64.b64encode(part.png).decode("ascii")
            content.append({"type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{data}"}})
    return content


# --- AWS ----------------------------------------------------------------------------


def _aws_client(service: str, *, region: str | None, profile: str | None, provider: str,
                model: str) -> Any:
    """A boto3 client with adaptive retries; configuration errors as GenerationError."""
    require_extra("boto3", "generative")
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, NoRegionError, ProfileNotFound

    config = Config(retries={"mode": "adaptive", "total_max_attempts": AWS_MAX_ATTEMPTS})
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
        return session.client(service, config=config)
    except ProfileNotFound as exc:
        raise GenerationError(f"AWS profile {profile!r} not found", provider=provider,
                              model=model, reason="credentials",
                              fix="add it to ~/.aws/config or pass another --aws-profile"
                              ) from exc
    except NoRegionError as exc:
        raise GenerationError("no AWS region configured", provider=provider, model=model,
                              reason="config",
                              fix="pass --aws-region (region=...) or set AWS_REGION") from exc
    except BotoCoreError as exc:  # pragma: no cover - other local configuration errors
        raise GenerationError(str(exc), provider=provider, model=model, reason="config",
                              fix="check the AWS configuration") from exc


_T = TypeVar("_T")


def _call_aws(provider: Any, service: str, call: Callable[[Any], _T],
              fixes: Callable[[str], tuple[str, str]]) -> _T:
    """``call(client)`` on ``provider``'s boto3 ``service`` client, made on first use.

    Args:
        provider: a provider with ``client``, ``region``, ``profile``, ``name``, ``model``.
        service: the boto3 service name, e.g. ``"bedrock-runtime"``.
        call: what to do with the client; its botocore errors become
            :class:`GenerationError` (other errors pass through).
        fixes: the client's region -> ``(not_found_fix, access_fix)`` for those errors.
    """
    if provider.client is None:
        provider.client = _aws_client(service, region=provider.region, profile=provider.profile,
                                      provider=provider.name, model=provider.model)
    region = provider.client.meta.region_name
    try:
        return call(provider.client)
    except Exception as exc:
        if not type(exc).__module__.startswith("botocore"):
            raise
        not_found_fix, access_fix = fixes(region)
        raise _aws_error(exc, provider=provider.name, model=provider.model,
                         not_found_fix=not_found_fix, access_fix=access_fix) from exc


def _aws_error(exc: Exception, *, provider: str, model: str, not_found_fix: str,
               access_fix: str) -> GenerationError:
    """Translate a botocore exception into a :class:`GenerationError`."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    def err(msg: str, reason: str, fix: str) -> GenerationError:
        out = GenerationError(msg, provider=provider, model=model, reason=reason, fix=fix)
        out.__cause__ = exc
        return out

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return err("no AWS credentials found", "credentials",
                   "run `aws configure` (or `aws sso login`), set AWS_PROFILE / "
                   "--aws-profile, or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, EndpointConnectionError):
        return err(f"cannot reach the AWS endpoint ({exc})", "connection",
                   "check the network and --aws-region")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", str(exc))
        if code in ("AccessDeniedException", "UnrecognizedClientException",
                    "ExpiredTokenException", "InvalidSignatureException"):
            reason = "access_denied" if code == "AccessDeniedException" else "credentials"
            return err(f"access denied ({code}: {message})", reason, access_fix)
        # AWS answers an unknown model id or endpoint with ValidationException (like a bad
        # option); only its message tells them apart, so it is read here, once.
        if code in ("ResourceNotFoundException",) or (
                code == "ValidationException" and (
                    "not found" in message.lower() or "identifier" in message.lower()
                    or "model id" in message.lower())):
            return err(f"not found ({code}: {message})", "not_found", not_found_fix)
        if code in ("ThrottlingException", "ServiceQuotaExceededException",
                    "TooManyRequestsException", "ServiceUnavailableException"):
            return err(f"throttled after {AWS_MAX_ATTEMPTS} attempts ({code}: {message})",
                       "throttled", "wait and retry, lower the request rate (fewer hits, "
                       "--k) or ask for a higher quota")
        return err(f"request refused ({code}: {message})", "refused",
                   "check the request options (--max-tokens, --temperature, images) "
                   "against what the model accepts")
    return err(str(exc), "connection", "check the network and the AWS configuration")


@dataclass
class BedrockProvider:
    """Amazon Bedrock through the Converse API.

    Attributes:
        model: Bedrock model id or inference profile id, e.g.
            ``anthropic.claude-3-haiku-20240307-v1:0``.
        temperature: sampling temperature (None: the model's default).
        max_tokens: most tokens generated.
        region: AWS region (None: the usual AWS configuration).
        profile: AWS profile name (None: the default).
        client: a ready ``bedrock-runtime`` client (made on first use when None).
    """

    model: str
    temperature: float | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    region: str | None = None
    profile: str | None = None
    client: Any = None
    name: str = "bedrock"

    def request(self, prompt: Prompt) -> dict[str, Any]:
        """The keyword arguments of ``converse`` for ``prompt``."""
        content: list[dict[str, Any]] = []
        for part in prompt.parts:
            if isinstance(part, str):
                content.append({"text": part})
            else:
                content.append({"image": {"format": "png", "source": {"bytes": part.png}}})
        inference: dict[str, Any] = {"maxTokens": int(self.max_tokens)}
        if self.temperature is not None:
            inference["temperature"] = float(self.temperature)
        return {"modelId": self.model, "messages": [{"role": "user", "content": content}],
                "inferenceConfig": inference}

    def generate(self, prompt: Prompt) -> str:
        """Call ``converse`` and return the text blocks of the answer."""
        request = self.request(prompt)
        def fixes(region: str) -> tuple[str, str]:
            return (f"check --generative-model against `aws bedrock list-foundation-models "
                    f"--region {region}` (some models need an inference profile id such as "
                    "us.<model id>)",
                    f"enable access to {self.model} in the Bedrock console (Model access, "
                    f"region {region}) and allow bedrock:InvokeModel for your identity")

        response = _call_aws(self, "bedrock-runtime", lambda c: c.converse(**request), fixes)
        stop = response.get("stopReason")
        if stop in ("content_filtered", "guardrail_intervened"):
            raise GenerationError(f"the model refused the request (stopReason {stop})",
                                  provider=self.name, model=self.model, reason="refused",
                                  fix="rephrase the prompt or review the guardrail settings")
        blocks = response.get("output", {}).get("message", {}).get("content", [])
        texts = [b["text"] for b in blocks if "text" in b]
        if not texts:
            raise GenerationError("the answer has no text block", provider=self.name,
                                  model=self.model, reason="bad_response",
                                  fix="use a text-generating model")
        return "".join(texts).strip()


def _tgi_request(prompt: Prompt, max_tokens: int, temperature: float | None,
                 model: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"max_new_tokens": int(max_tokens), "return_full_text": False}
    if temperature is not None:
        params["temperature"] = float(temperature)
    return {"inputs": prompt.text, "parameters": params}


def _tgi_response(body: Any) -> str:
    item = body[0] if isinstance(body, list) and body else body
    return str(item["generated_text"])


def _messages_request(prompt: Prompt, max_tokens: int, temperature: float | None,
                      model: str | None) -> dict[str, Any]:
    request: dict[str, Any] = {"messages": [{"role": "user", "content": _openai_content(prompt)}],
                               "max_tokens": int(max_tokens)}
    if temperature is not None:
        request["temperature"] = float(temperature)
    if model:
        request["model"] = model
    return request


def _messages_response(body: Any) -> str:
    return str(body["choices"][0]["message"]["content"])


_SAGEMAKER_CODECS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[[Any], str]]] = {
    "tgi": (_tgi_request, _tgi_response),
    "messages": (_messages_request, _messages_response),
}


@dataclass
class SageMakerProvider:
    """A SageMaker real-time endpoint serving a language model.

    Attributes:
        endpoint: endpoint name.
        request_format: ``tgi`` or ``messages`` (see the module docstring).
        model: model name sent in ``messages`` requests (optional; shown in errors).
        temperature: sampling temperature (None: the container's default).
        max_tokens: most tokens generated.
        region: AWS region (None: the usual AWS configuration).
        profile: AWS profile (None: the default).
        client: a ready ``sagemaker-runtime`` client (made on first use when None).
        build_request: ``f(prompt, max_tokens, temperature, model) -> dict`` overriding
            the format's request.
        parse_response: ``f(decoded JSON) -> str`` overriding the format's response.
    """

    endpoint: str
    request_format: str = "tgi"
    model_name: str | None = None
    temperature: float | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    region: str | None = None
    profile: str | None = None
    client: Any = None
    build_request: Callable[..., dict[str, Any]] | None = None
    parse_response: Callable[[Any], str] | None = None
    name: str = "sagemaker"

    def __post_init__(self) -> None:
        if self.request_format not in _SAGEMAKER_CODECS:
            raise GeofmValueError(f"SageMaker request format {self.request_format!r} is not "
                                  f"one of {', '.join(SAGEMAKER_FORMATS)}")

    @property
    def model(self) -> str:
        """The endpoint name (and served model name, when given)."""
        return f"{self.endpoint}/{self.model_name}" if self.model_name else self.endpoint

    def request(self, prompt: Prompt) -> dict[str, Any]:
        """The keyword arguments of ``invoke_endpoint`` for ``prompt``."""
        if prompt.images and self.request_format == "tgi" and self.build_request is None:
            raise GenerationError(
                "the 'tgi' request format carries no images", provider=self.name,
                model=self.model, reason="config",
                fix="use --sagemaker-format messages with a multimodal container, or drop "
                "--with-images")
        build = self.build_request or _SAGEMAKER_CODECS[self.request_format][0]
        body = build(prompt, self.max_tokens, self.temperature, self.model_name)
        return {"EndpointName": self.endpoint, "ContentType": "application/json",
                "Accept": "application/json", "Body": json.dumps(body).encode("utf-8")}

    def generate(self, prompt: Prompt) -> str:
        """Call ``invoke_endpoint`` and parse the answer."""
        request = self.request(prompt)
        def fixes(region: str) -> tuple[str, str]:
            return (f"check --generative-endpoint against `aws sagemaker list-endpoints "
                    f"--region {region}` (the endpoint must be InService)",
                    "allow sagemaker:InvokeEndpoint on this endpoint for your identity")

        raw = _call_aws(self, "sagemaker-runtime",
                        lambda c: c.invoke_endpoint(**request)["Body"].read(), fixes)
        parse = self.parse_response or _SAGEMAKER_CODECS[self.request_format][1]
        try:
            return parse(json.loads(raw)).strip()
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise GenerationError(
                f"cannot read the endpoint's answer as the {self.request_format!r} format: "
                f"{raw[:200]!r}", provider=self.name, model=self.model, reason="bad_response",
                fix="pass --sagemaker-format matching the container (tgi or messages)",
            ) from exc


# --- OpenAI-compatible HTTP ---------------------------------------------------------


def api_key_from_env(names: Sequence[str] = API_KEY_ENVS) -> str | None:
    """The first non-empty API key among the environment variables ``names``."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


@dataclass
class OpenAIProvider:
    """Any OpenAI-compatible chat-completions API.

    Attributes:
        base_url: API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is
            appended).
        model: served model name.
        temperature: sampling temperature (None: the server's default).
        max_tokens: most tokens generated.
        api_key: bearer token (None: read :data:`API_KEY_ENVS`; none sent if unset).
        timeout: seconds to wait for one answer.
        retries: retries after HTTP 429 / 5xx.
        backoff: first retry wait in seconds (doubles each time).
    """

    base_url: str
    model: str
    temperature: float | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 120.0
    retries: int = 4
    backoff: float = 1.0
    name: str = "openai"

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise GeofmValueError(f"--generative-base-url {self.base_url!r} must start with "
                                  "http:// or https:// (e.g. http://127.0.0.1:8000/v1)")
        if self.api_key is None:
            self.api_key = api_key_from_env()

    @property
    def url(self) -> str:
        """The chat-completions URL."""
        return self.base_url.rstrip("/") + "/chat/completions"

    def request(self, prompt: Prompt) -> dict[str, Any]:
        """The JSON body posted for ``prompt``."""
        body: dict[str, Any] = {"model": self.model,
                                "messages": [{"role": "user", "content": _openai_content(prompt)}],
                                "max_tokens": int(self.max_tokens)}
        if self.temperature is not None:
            body["temperature"] = float(self.temperature)
        return body

    def _error(self, msg: str, reason: str, fix: str) -> GenerationError:
        return GenerationError(msg, provider=self.name, model=self.model, reason=reason,
                               fix=fix)

    def _post(self, data: bytes) -> bytes:
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempt = 0
        while True:
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                    return bytes(resp.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                status = exc.code
                if (status == 429 or status >= 500) and attempt < self.retries:
                    wait = self.backoff * 2 ** attempt
                    after = exc.headers.get("Retry-After") if exc.headers else None
                    if after and after.replace(".", "", 1).isdigit():
                        wait = float(after)
                    time.sleep(min(wait, MAX_BACKOFF_S))
                    attempt += 1
                    continue
                raise self._http_error(status, detail, attempt) from exc
            except urllib.error.URLError as exc:
                raise self._error(f"cannot connect to {self.url} ({exc.reason})", "connection",
                                  "start the server or fix --generative-base-url") from exc
            except TimeoutError as exc:
                raise self._error(f"no answer from {self.url} within {self.timeout:g} s",
                                  "connection", "check the server, or use fewer hits / "
                                  "a smaller --max-tokens") from exc

    def _http_error(self, status: int, detail: str, attempt: int) -> GenerationError:
        if status in (401, 403):
            return self._error(f"HTTP {status} from {self.url}: {detail}", "credentials",
                               f"set the API key in ${API_KEY_ENVS[0]} (or ${API_KEY_ENVS[1]})")
        if status == 404:
            return self._error(f"HTTP 404 from {self.url}: {detail}", "not_found",
                               "check --generative-model against the server's /models list "
                               "and that --generative-base-url ends in /v1")
        if status == 429:
            return self._error(f"throttled (HTTP 429) after {attempt + 1} attempts: {detail}",
                               "throttled", "wait and retry, or lower the request rate")
        if status >= 500:
            return self._error(f"server error HTTP {status} after {attempt + 1} attempts: "
                               f"{detail}", "connection", "check the server's logs")
        return self._error(f"request refused (HTTP {status}): {detail}", "refused",
                           "check the prompt, --max-tokens, --temperature and images against "
                           "what the model accepts")

    def generate(self, prompt: Prompt) -> str:
        """POST the prompt and return ``choices[0].message.content``."""
        raw = self._post(json.dumps(self.request(prompt)).encode("utf-8"))
        try:
            choice = json.loads(raw)["choices"][0]
            content = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise self._error(f"the answer is not a chat completion: {raw[:200]!r}",
                              "bad_response", "point --generative-base-url at an "
                              "OpenAI-compatible API (…/v1)") from exc
        if choice.get("finish_reason") == "content_filter" or content is None:
            raise self._error("the model refused the request (content filter)", "refused",
                              "rephrase the prompt")
        return str(content).strip()


def make_provider(name: str, *, model: str | None = None, endpoint: str | None = None,
                  base_url: str | None = None, temperature: float | None = None,
                  max_tokens: int = DEFAULT_MAX_TOKENS, region: str | None = None,
                  profile: str | None = None, sagemaker_format: str = "tgi",
                  client: Any = None) -> Provider:
    """Build a provider by name, checking that its required options are given.

    Args:
        name: ``bedrock``, ``sagemaker`` or ``openai``.
        model: Bedrock model id / served model name (required for bedrock and openai).
        endpoint: SageMaker endpoint name (required for sagemaker).
        base_url: OpenAI-compatible API root (required for openai).
        temperature: sampling temperature, 0..2 (None: the model's default).
        max_tokens: most tokens generated (>= 1).
        region: AWS region for bedrock/sagemaker.
        profile: AWS profile for bedrock/sagemaker.
        sagemaker_format: request format of the SageMaker container.
        client: a ready boto3 client (bedrock/sagemaker), e.g. with a Stubber.

    Raises:
        GeofmValueError: unknown provider, a missing required option, or a value out of
            range.
    """
    if name not in PROVIDERS:
        raise GeofmValueError(f"generative provider {name!r} is not one of {', '.join(PROVIDERS)}")
    if max_tokens < 1:
        raise GeofmValueError(f"--max-tokens must be >= 1, got {max_tokens}")
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise GeofmValueError(f"--temperature must be in 0..2, got {temperature}")
    needs = {"bedrock": ("model", "--generative-model ID"),
             "sagemaker": ("endpoint", "--generative-endpoint NAME"),
             "openai": ("base_url", "--generative-base-url URL")}[name]
    given = {"model": model, "endpoint": endpoint, "base_url": base_url}
    if not given[needs[0]]:
        raise GeofmValueError(f"--generative-provider {name} needs {needs[1]}")
    if name == "openai" and not model:
        raise GeofmValueError("--generative-provider openai needs --generative-model NAME "
                              "(the served model name)")
    if name == "bedrock":
        assert model is not None
        return BedrockProvider(model=model, temperature=temperature, max_tokens=max_tokens,
                               region=region, profile=profile, client=client)
    if name == "sagemaker":
        assert endpoint is not None
        return SageMakerProvider(endpoint=endpoint, request_format=sagemaker_format,
                                 model_name=model, temperature=temperature,
                                 max_tokens=max_tokens, region=region, profile=profile,
                                 client=client)
    assert base_url is not None and model is not None
    return OpenAIProvider(base_url=base_url, model=model, temperature=temperature,
                          max_tokens=max_tokens)
