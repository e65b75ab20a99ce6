"""The HTTP door: a FastAPI app over loaded runs and the verbs their tasks declare.

    GET  /                       the web page (static/, every asset served from here)
    GET  /health                 {"status": "ok", "runs": N, "pending": N}
    GET  /runs                   what is served: name, task, model, metrics, and each verb's inputs and options
    POST /runs/{name}/{verb}     `predict` for every run, and its task's own verbs (translate, detect, ...)
    GET  /docs                   OpenAPI, with each endpoint's options

A verb whose input is images or audio takes multipart/form-data (the files under the input's name,
e.g. `images`, options as form fields); every other verb takes a JSON object (texts under the
input's name, e.g. `texts`, options as keys). The answer is the verb's own dict (what `--json`
prints). A streaming verb (`generate`) answers newline-delimited JSON: {"piece": ...} lines, then
{"result": {...}}. Every refusal is {"error": "one line"} with its status.

No route names a task: the endpoints are built from each task's declarations (commands.Verb,
Task.inputs, Task.predict_args). Runs are addressed by name only, never by a path from a request,
and arguments that name files (`--out`, `--lm`) are not offered.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from lamina.errors import LaminaError, UsageError
from lamina.serve import inputs as decode
from lamina.serve.endpoints import Endpoint, describe_run, endpoints_of, option_info, parse_options, request_schema
from lamina.serve.inputs import Refused
from lamina.serve.limits import Limits
from lamina.serve.pool import InferencePool

STATIC = Path(__file__).parent / "static"
ENVIRONMENT = "LAMINA_SERVE"  # the configuration handed to uvicorn's worker processes


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity (a score of -inf, the metrics of a run that diverged): null instead."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def tidy(result: dict[str, Any], run: str, names: list[str] | None) -> dict[str, Any]:
    """The verb's dict as the client should see it: the run by name (not its path here), each upload
    by its own file name, and no NaN."""
    result = finite(result)
    if "run" in result:
        result["run"] = run
    if names is not None:
        for entry, name in zip(result.get("results", []), names):
            entry["input"] = name
    return result


def refusal(status: int, reason: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": " ".join(str(reason).split())}, status_code=status)


def failure(exc: BaseException) -> Any:
    """The answer to what a verb raised: a refusal, a user's mistake (422), or a fault of ours (500,
    logged with its traceback; the server goes on)."""
    if isinstance(exc, Refused):
        return refusal(exc.status, exc.reason)
    if isinstance(exc, (UsageError, LaminaError)):
        return refusal(422, str(exc))
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return refusal(500, f"internal error ({type(exc).__name__}): {str(exc)[:200]}")


async def read_request(request, endpoint: Endpoint, limits: Limits) -> tuple[Any, dict[str, Any], list | None]:
    """(inputs: decoded later on the inference thread, as (kind, bytes, name) or texts; options; upload
    names)."""
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if endpoint.uploads:
        if content_type != "multipart/form-data":
            raise Refused(415, f"{endpoint.path} takes multipart/form-data (files under {endpoint.input.dest!r})")
        files, given = [], {}
        try:
            async with request.form(max_files=limits.inputs, max_fields=64) as form:  # closes spooled uploads
                for key, value in form.multi_items():
                    if hasattr(value, "filename") and hasattr(value, "read"):
                        if key not in (endpoint.input.dest, "file", "files"):
                            raise Refused(422, f"unexpected file field {key!r}: send files as {endpoint.input.dest!r}")
                        files.append((value.filename or f"upload-{len(files) + 1}", await value.read()))
                    elif key in given:
                        raise Refused(422, f"option {key!r} given twice")
                    else:
                        given[key] = value
        except Refused:
            raise
        except HTTPException as exc:  # the body limit's 413, or starlette's refusal of a malformed form
            if exc.status_code != 400:
                raise
            detail = str(exc.detail)
            raise Refused(413 if "Too many" in detail else 400, f"malformed upload: {detail}") from None
        except ClientDisconnect:
            raise Refused(400, "the client left before sending the whole body") from None
        except Exception as exc:  # starlette's multipart errors (too many files, a broken body)
            detail = str(getattr(exc, "detail", exc))
            raise Refused(413 if "Too many" in detail else getattr(exc, "status_code", 400),
                          f"malformed upload: {detail}") from None  # fmt: skip
        decode.count(len(files), endpoint.input.dest, limits)
        names = [name for name, _ in files]
        return [(endpoint.input.input, data, name) for name, data in files], given, names
    if content_type != "application/json":
        raise Refused(415, f"{endpoint.path} takes a JSON object (Content-Type: application/json)")
    try:
        body = await request.body()
    except ClientDisconnect:
        raise Refused(400, "the client left before sending the whole body") from None
    try:
        given = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise Refused(400, "malformed JSON: nested too deeply") from None
    if not isinstance(given, dict):
        raise Refused(400, "the body must be a JSON object of the verb's input and options")
    items = None
    if endpoint.input is not None:
        dest = endpoint.input.dest
        if dest not in given:
            raise Refused(422, f"give the texts as {dest!r} (a list of strings)")
        items = decode.texts(given.pop(dest), dest, limits)
    return items, given, None


def decoded(items, limits: Limits):
    """Uploads decoded (on the inference thread: decoding costs as much as a small model)."""
    if not items or isinstance(items[0], str):
        return items
    return [decode.DECODERS[kind](data, name, limits) for kind, data, name in items]


def all_failed(result: dict[str, Any]) -> str | None:
    """The first error when no input could be used (a bad upload): the request itself is bad."""
    entries = result.get("results")
    if isinstance(entries, list) and entries and all("error" in e for e in entries):
        return f"{entries[0].get('input', 'input')}: {entries[0]['error']}".replace(": " * 2, ": ")
    return None


# ----- the app --------------------------------------------------------------------------------------------
def create_app(
    runs: dict[str, str | Path], limits: Limits | None = None, device: str = "cpu", threads: int | None = None
):
    """The FastAPI app serving `runs` (name -> run directory), every model loaded now."""
    import asyncio

    import torch
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    import lamina
    from lamina.serve.body import BodyLimit

    limits = limits or Limits()
    if threads:
        torch.set_num_threads(threads)
    loaded = {name: lamina.load(path, device) for name, path in runs.items()}
    endpoints = {(name, e.verb): e for name, run in loaded.items() for e in endpoints_of(name, run)}
    pool = InferencePool(limits.queue)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        pool.close()

    app = FastAPI(
        title="lamina",
        version=lamina.__version__,
        description="Use trained lamina runs: each served run's verbs as endpoints (see /runs).",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, limit=limits.body_bytes)
    app.state.pool, app.state.runs, app.state.limits = pool, loaded, limits

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        reason = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            reason = f"not found: {_request.url.path}"
        response = refusal(exc.status_code, reason)
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return refusal(422, f"{where}: {first.get('msg')}" if where else first.get("msg"))

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    async def health():
        return {"status": "ok", "runs": len(loaded), "pending": pool.pending}

    @app.get("/runs")
    async def list_runs():
        return finite(
            {"runs": [describe_run(name, run, endpoints) for name, run in loaded.items()], "limits": limits.to_dict()}
        )

    def route(endpoint: Endpoint):
        async def handle(request: Request):
            try:
                items, given, names = await read_request(request, endpoint, limits)
                options = parse_options(endpoint, given, limits)
            except Refused as exc:
                return refusal(exc.status, exc.reason)
            if endpoint.stream and options.pop("stream", True):
                return await streamed(endpoint, items, options)
            try:
                if items is not None and limits.batch > 1:
                    key = (endpoint.path, json.dumps(options, sort_keys=True))
                    result = await pool.batched(
                        key,
                        items,
                        lambda raw: decoded(raw, limits),
                        lambda inputs: endpoint.call(inputs, None, **options),
                        limits.batch,
                        limits.request_seconds,
                    )
                else:
                    result = await pool.run(
                        lambda: endpoint.call(decoded(items, limits), None, **options), limits.request_seconds
                    )
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return failure(exc)
            reason = all_failed(result)
            if reason:
                return refusal(400, reason)
            return tidy(result, endpoint.run, names)

        handle.__annotations__ = {"request": Request}  # resolved here: this module's annotations are strings
        return handle

    async def streamed(endpoint: Endpoint, items, options):
        pieces = pool.stream(
            lambda emit: endpoint.call(decoded(items, limits), emit, **options), limits.request_seconds
        )
        try:
            first = await pieces.__anext__()  # refusals and bad options are answered with their status
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            return failure(exc)

        async def lines():
            item = first
            try:
                while True:
                    kind, value = item
                    if kind == "piece":
                        yield json.dumps({"piece": finite(value)}) + "\n"
                    else:
                        yield json.dumps({"result": tidy(value, endpoint.run, None)}) + "\n"
                        return
                    item = await pieces.__anext__()
            except Exception as exc:  # the status is sent: the error goes in the stream
                yield json.dumps({"error": json.loads(failure(exc).body)["error"]}) + "\n"
            finally:
                await pieces.aclose()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    for endpoint in endpoints.values():
        options = {a.dest: option_info(a, endpoint.defaults.get(a.dest)) for a in endpoint.options}
        app.add_api_route(
            endpoint.path,
            route(endpoint),
            methods=["POST"],
            name=f"{endpoint.run}.{endpoint.verb}",
            summary=f"{endpoint.verb} ({endpoint.run}, a {loaded[endpoint.run].task.name} run)",
            description=endpoint.help,
            tags=[endpoint.run],
            openapi_extra={"requestBody": request_schema(endpoint, options)},
        )

    @app.post("/runs/{run}/{verb}", include_in_schema=False)
    async def unknown(run: str, verb: str):
        if run not in loaded:
            return refusal(404, f"no run named {run!r} is served (see /runs)")
        offered = ", ".join(v for (n, v) in endpoints if n == run)
        return refusal(404, f"run {run!r} has no verb {verb!r} (it offers: {offered})")

    return app


def from_environment():
    """The app of one uvicorn worker process (`lamina serve --workers N`), configured by the parent."""
    config = json.loads(os.environ[ENVIRONMENT])
    return create_app(config["runs"], Limits.from_dict(config["limits"]), config["device"], config["threads"])
