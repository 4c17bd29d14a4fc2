"""OpenAI-compatible HTTP API over an `AdapterPool` (FastAPI).

Implements what OpenAI's clients call: ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions``, each with ``stream: true`` as server-sent events. Every error is a
4xx JSON body in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; request
bodies and ``max_tokens`` are capped.
"""

import json
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from tunelab.serving.pool import AdapterPool, Served


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 64 * 1024
    max_tokens: int = 512
    default_max_tokens: int = 128


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    stream: bool = False
    seed: int | None = None


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    stream: bool = False
    seed: int | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status, message, kind, param, code,
        )  # fmt: skip


def create_app(pool: AdapterPool, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="TuneLab", docs_url=None, redoc_url=None)
    _install_error_handlers(app, limits)

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
    async def chat(request: ChatRequest):
        messages = [m.model_dump(include={"role", "content"}) for m in request.messages]
        served = _route(pool, request.model, messages)
        prompt = pool.prompt(served, messages)
        budget = _max_tokens(request.max_completion_tokens or request.max_tokens, limits)
        return await _respond(pool, served, prompt, budget, request, chat=True)

    @app.post("/v1/completions")
    async def complete(request: CompletionRequest):
        messages = [{"role": "user", "content": request.prompt}]
        served = _route(pool, request.model, messages)
        prompt = pool.prompt(served, messages)
        budget = _max_tokens(request.max_tokens, limits)
        return await _respond(pool, served, prompt, budget, request, chat=False)

    return app


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
        return limits.default_max_tokens
    if asked > limits.max_tokens:
        raise ApiError(
            400, f"max_tokens is {asked}; this server allows at most {limits.max_tokens}",
            "invalid_request_error", param="max_tokens",
        )  # fmt: skip
    return asked


async def _respond(pool, served: Served, prompt: str, budget: int, request, chat: bool):
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    seed = request.seed or 0
    pieces = pool.stream(served, prompt, budget, request.temperature, seed)
    if request.stream:
        return StreamingResponse(
            _events(pieces, ident, created, served.name, chat), media_type="text/event-stream"
        )
    text = "".join(await run_in_threadpool(list, pieces))
    prompt_tokens, completion_tokens = pool.count_tokens(prompt), pool.count_tokens(text)
    finish = "length" if completion_tokens >= budget else "stop"
    choice = (
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        if chat
        else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    )
    return {
        "id": ident,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": served.name,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


async def _events(pieces, ident: str, created: int, model: str, chat: bool):
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            body = {"role": "assistant", "content": delta or ""} if first else (
                {"content": delta} if delta is not None else {}
            )  # fmt: skip
            choice = {"index": 0, "delta": body, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        payload = {"id": ident, "object": kind, "created": created, "model": model,
                   "choices": [choice]}  # fmt: skip
        return f"data: {json.dumps(payload)}\n\n"

    yield chunk("", None, first=True)
    try:
        async for piece in iterate_in_threadpool(pieces):
            if piece:
                yield chunk(piece, None)
    except Exception as err:  # headers are sent: report in-band, as OpenAI does
        error = {"error": {"message": str(err), "type": "server_error", "param": None,
                           "code": None}}  # fmt: skip
        yield f"data: {json.dumps(error)}\n\n"
        return
    finally:
        await run_in_threadpool(pieces.close)  # a client that hung up stops generation
    yield chunk(None, "stop")
    yield "data: [DONE]\n\n"


def _install_error_handlers(app: FastAPI, limits: Limits) -> None:
    def body(status: int, message: str, kind: str, param=None, code=None) -> JSONResponse:
        error = {"message": message, "type": kind, "param": param, "code": code}
        return JSONResponse({"error": error}, status_code=status)

    @app.middleware("http")
    async def cap_request_size(request: Request, call_next):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
            return body(
                413, f"request body is {declared} bytes; the limit is {limits.max_request_bytes}",
                "invalid_request_error", code="request_too_large",
            )  # fmt: skip
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return body(err.status, err.message, err.kind, err.param, err.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return body(400, "the request body is not valid JSON", "invalid_request_error")
        where = ".".join(loc) or None
        message = f"{where}: {first['msg']}" if where else first["msg"]
        return body(400, message, "invalid_request_error", param=where)

    @app.exception_handler(404)
    async def not_found(request: Request, err):
        return body(404, f"no route {request.method} {request.url.path}", "invalid_request_error")

    @app.exception_handler(405)
    async def wrong_method(request: Request, err):
        return body(405, f"{request.method} is not allowed on {request.url.path}",
                    "invalid_request_error")  # fmt: skip

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        return body(500, f"internal error: {type(err).__name__}", "server_error")
