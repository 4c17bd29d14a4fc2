"""OpenAI-compatible HTTP API over an `AdapterPool` (FastAPI).

Implements what OpenAI's clients call: ``GET /v1/models``, ``POST /v1/chat/completions`` (with
``response_format`` for JSON answers) and ``POST /v1/completions``, each with ``stream: true``
as server-sent events, plus ``GET /health``.
Handlers never block a thread: a request is queued on the pool's generation engine and its
text comes back through an asyncio queue. Every error is JSON in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``; a client's mistake is a 4xx before any
work, never a 500 or an error inside a 200 stream.
"""

import asyncio
import hmac
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.errors import TuneLabError
from tunelab.generation.constraints import Constraint
from tunelab.serving.pool import AdapterPool, Served

log = logging.getLogger("tunelab.serve")
SEED_LIMIT = 2**63  # torch seeds are 64-bit
GREEDY_BELOW = 1e-4  # a temperature this close to 0 is greedy decoding (its limit)
DISCONNECT_POLL_S = 0.5


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 64 * 1024
    max_tokens: int = 512
    default_max_tokens: int = 128
    api_key: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _encodable(cls, value: str) -> str:
        return _valid_unicode(value)


class _Common(BaseModel):
    """Fields both endpoints share. Unknown fields are accepted (clients send ``user``,
    ``metadata`` ...); the ones that would change the answer and are not implemented are
    refused by :func:`_refuse_unsupported`."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    seed: int | None = Field(None, ge=-SEED_LIMIT, lt=SEED_LIMIT)
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("up to 4 non-empty stop strings")
        return value


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: dict | None = None  # text | json_object | json_schema


class CompletionRequest(_Common):
    prompt: str

    @field_validator("prompt")
    @classmethod
    def _encodable(cls, value: str) -> str:
        return _valid_unicode(value)


# Fields that change the answer and are not implemented, with the value that means "off".
UNSUPPORTED = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),  # on /v1/completions (chat takes it)
    "suffix": (None, ""),
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status, message, kind, param, code,
        )  # fmt: skip


def create_app(pool: AdapterPool, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="TuneLab", docs_url=None, redoc_url=None)
    _install_error_handlers(app, limits)

    @app.get("/health")
    def health():
        return {"status": "ok", "waiting": pool.engine.waiting(), "decoding": pool.engine.busy}

    @app.get("/v1/models")
    def list_models():
        return {
            "object": "list",
            "data": [
                {
                    "id": served.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tunelab",
                    "method": served.kind,
                    "task_prefix": served.task_prefix,
                }
                for served in pool.models.values()
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: Request):
        messages = [m.model_dump(include={"role", "content"}) for m in body.messages]
        budget = _max_tokens(body.max_completion_tokens or body.max_tokens, limits)
        return await _respond(pool, messages, budget, body, http, chat=True)

    @app.post("/v1/completions")
    async def complete(body: CompletionRequest, http: Request):
        messages = [{"role": "user", "content": body.prompt}]
        return await _respond(pool, messages, _max_tokens(body.max_tokens, limits), body, http,
                              chat=False)  # fmt: skip

    return app


def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (a lone surrogate)") from None
    return value


def _invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param=param, code=code)


def _refuse_unsupported(body: _Common) -> None:
    if body.n != 1:
        raise _invalid("n: this server returns one choice per request", param="n")
    for name, value in (body.model_extra or {}).items():
        if name in UNSUPPORTED and value not in UNSUPPORTED[name]:
            where = " on /v1/completions (use /v1/chat/completions)" * (name == "response_format")
            raise _invalid(f"{name} is not supported by this server{where}", param=name)


def _route(pool: AdapterPool, model: str | None, messages: list[dict]) -> Served:
    try:
        return pool.route(model, messages)
    except LookupError:
        known = ", ".join(pool.models)
        raise ApiError(
            404, f"The model '{model}' does not exist; served: {known}", "invalid_request_error",
            param="model", code="model_not_found",
        ) from None  # fmt: skip


def _max_tokens(asked: int | None, limits: Limits) -> int:
    if asked is None:
        return min(limits.default_max_tokens, limits.max_tokens)
    if asked > limits.max_tokens:
        raise _invalid(
            f"max_tokens is {asked}; this server allows at most {limits.max_tokens}",
            param="max_tokens",
        )
    return asked


def _seed(asked: int | None) -> int:
    """The request's seed, or a fresh one: sampling without a seed differs call to call."""
    return secrets.randbelow(SEED_LIMIT) if asked is None else asked % SEED_LIMIT


def _constraint(pool: AdapterPool, response_format: dict | None, served: Served):
    """OpenAI's ``response_format``: ``text`` (no grammar), ``json_object`` (any JSON object)
    or ``json_schema`` (``{"json_schema": {"name", "schema", "strict"}}``). Without one, a run
    trained with a constraint keeps its own, so it answers as it was evaluated."""
    if response_format is None:
        return served.constraint
    kind = response_format.get("type")
    if kind == "text":
        return None
    if pool.grammar_problem and kind in ("json_object", "json_schema"):
        raise _invalid(f"response_format: {pool.grammar_problem}", param="response_format")
    if kind == "json_object":
        return Constraint.of("json")
    if kind != "json_schema":
        raise _invalid(
            f"response_format.type {kind!r}: use text, json_object or json_schema",
            param="response_format",
        )
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise _invalid("response_format.json_schema.schema: a JSON schema object is required",
                       param="response_format")  # fmt: skip
    try:
        return Constraint.of(schema)
    except TuneLabError as err:
        raise _invalid(f"response_format.json_schema.schema: {err}",
                       param="response_format") from None  # fmt: skip


def _check_context(pool: AdapterPool, served: Served, prompt_tokens: int, budget: int) -> None:
    virtual = served.prefix.get_seq_length() if served.prefix is not None else 0
    context = pool.context
    if context and prompt_tokens + virtual + budget > context:
        raise _invalid(
            f"the prompt is {prompt_tokens} tokens and max_tokens {budget}; together they "
            f"exceed the model's context of {context} tokens",
            param="messages", code="context_length_exceeded",
        )  # fmt: skip


async def _respond(pool, messages: list[dict], budget: int, body, http: Request, chat: bool):
    _refuse_unsupported(body)
    served = _route(pool, body.model, messages)
    ids = pool.encode(served, messages)
    _check_context(pool, served, len(ids), budget)
    temperature = body.temperature if body.temperature >= GREEDY_BELOW else 0.0
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    pieces: list[str] = []

    def sink(kind: str, value) -> None:  # called on the engine's thread
        if kind == "delta" and not body.stream:  # gathered here: no event-loop wake-up per
            pieces.append(value)  # token, which would contend with decoding for the GIL
            return
        loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    # a bad schema is a 400 before any work; compiling a client's schema may take a while, so
    # that happens off the event loop (in the loop's bounded thread pool)
    response_format = getattr(body, "response_format", None)
    if served.classifier is not None and response_format and response_format.get("type") != "text":
        raise _invalid(
            f"response_format: {served.name} answers with one of its labels through a "
            "classification head; it cannot follow a format",
            param="response_format",
        )
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        constraint = await asyncio.to_thread(_constraint, pool, response_format, served)
    else:
        constraint = _constraint(pool, response_format, served)
    request = pool.submit(served, ids, budget, sink, temperature=temperature, top_p=body.top_p,
                          seed=_seed(body.seed), stop=tuple(stops),
                          constraint=constraint)  # fmt: skip
    reply = _Reply(chat, served.name, len(ids))
    if body.stream:
        return StreamingResponse(_stream(events, request, reply), media_type="text/event-stream")
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if await http.is_disconnected():  # nobody to answer: stop generating
                    request.cancel()
                    return Response(status_code=499)
                continue
            if kind == "error":
                raise ApiError(500, value, "server_error")
            else:
                return reply.whole("".join(pieces), value, request.completion_tokens)
    finally:
        request.cancel()  # a no-op once done; stops the work if this task was cancelled


@dataclass
class _Reply:
    """OpenAI's response bodies for one request."""

    chat: bool
    model: str
    prompt_tokens: int

    def __post_init__(self):
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def _envelope(self, kind: str, choice: dict) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": [choice]}  # fmt: skip

    def whole(self, text: str, finish: str, completion_tokens: int) -> dict:
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text},
             "finish_reason": finish}
            if self.chat
            else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        )  # fmt: skip
        body = self._envelope("chat.completion" if self.chat else "text_completion", choice)
        body["usage"] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }
        return body

    def chunk(self, delta: str | None, finish: str | None, first: bool = False) -> str:
        if self.chat:
            body = {"role": "assistant", "content": delta or ""} if first else (
                {"content": delta} if delta is not None else {}
            )  # fmt: skip
            choice = {"index": 0, "delta": body, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            kind = "text_completion"
        return f"data: {json.dumps(self._envelope(kind, choice))}\n\n"


async def _stream(events: asyncio.Queue, request, reply: _Reply):
    try:
        yield reply.chunk("", None, first=True)
        while True:
            kind, value = await events.get()
            if kind == "delta":
                yield reply.chunk(value, None)
            elif kind == "error":  # headers are sent: report in-band, as OpenAI does
                log.error("stream %s failed: %s", reply.id, value)
                error = {"message": "generation failed; see the server log",
                         "type": "server_error", "param": None, "code": None}  # fmt: skip
                yield f"data: {json.dumps({'error': error})}\n\n"
                return
            else:
                yield reply.chunk(None, value)
                yield "data: [DONE]\n\n"
                return
    finally:
        request.cancel()  # a client that hung up stops its generation


def _error_body(status: int, message: str, kind: str, param=None, code=None) -> JSONResponse:
    error = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status)


class BodyLimit:
    """ASGI middleware: a request body over the limit gets 413, with or without a
    Content-Length (a chunked body is counted as it arrives and buffered, at most the limit)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send, declared.decode())
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._too_large(scope, receive, send, f"over {self.limit}")
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for a disconnect, as Starlette does

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send, size: str):
        response = _error_body(
            413, f"request body is {size} bytes; the limit is {self.limit}",
            "invalid_request_error", code="request_too_large",
        )  # fmt: skip
        await response(scope, receive, send)


class ApiKey:
    """ASGI middleware: every ``/v1`` route needs ``Authorization: Bearer KEY``."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = _error_body(
                    401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                    "invalid_request_error", code="invalid_api_key",
                )  # fmt: skip
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _install_error_handlers(app: FastAPI, limits: Limits) -> None:
    app.add_middleware(BodyLimit, limit=limits.max_request_bytes)
    if limits.api_key:
        app.add_middleware(ApiKey, key=limits.api_key)  # outermost: checked first

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return _error_body(err.status, err.message, err.kind, err.param, err.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if (
            first.get("type") in ("json_invalid", "json_type")
            or not loc
            and "JSON" in str(first.get("msg", ""))
        ):
            return _error_body(400, "the request body is not valid JSON", "invalid_request_error")
        where = ".".join(loc) or None
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        return _error_body(400, message, "invalid_request_error", param=where)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        if err.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif err.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        elif err.status_code == 400:  # a body FastAPI could not decode (not UTF-8, say)
            message = "the request body is not valid JSON in UTF-8"
        else:
            message = str(err.detail)
        return _error_body(err.status_code, message, "invalid_request_error")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=err)
        return _error_body(500, f"internal error: {type(err).__name__}", "server_error")
