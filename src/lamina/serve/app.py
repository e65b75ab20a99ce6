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
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.commands import Arg
from lamina.errors import LaminaError, UsageError
from lamina.serve import inputs as decode
from lamina.serve.inputs import Refused
from lamina.serve.limits import Limits
from lamina.serve.pool import InferencePool

STATIC = Path(__file__).parent / "static"
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ENVIRONMENT = "LAMINA_SERVE"  # the configuration handed to uvicorn's worker processes


# ----- what is served ---------------------------------------------------------------------------------
def find_runs(sources: list[str | Path]) -> dict[str, Path]:
    """Run name -> directory. A source holding lamina.json is one run; another folder stands for each
    of its sub-folders that holds one. A name is the directory's own name: two of the same name, or a
    name that is not a plain word (letters, digits, '.', '_', '-'), are refused."""
    from lamina.engine import checkpoint as ckpt

    found: dict[str, Path] = {}
    for source in sources:
        path = Path(source).expanduser()
        if (path / ckpt.RUN_FILE).is_file():
            candidates = [path]
        elif path.is_dir():
            # Runs with weights: one still before its first checkpoint has nothing to serve yet.
            candidates = sorted(
                p for p in path.iterdir() if (p / ckpt.RUN_FILE).is_file() and (p / ckpt.WEIGHTS_FILE).is_file()
            )
            if not candidates:
                raise LaminaError(f"{path} holds no runs (folders with {ckpt.RUN_FILE})")
        else:
            raise LaminaError(f"{path}: no such run or folder of runs")
        for run in candidates:
            name = run.resolve().name
            if not RUN_NAME.fullmatch(name):
                raise LaminaError(f"{run}: a run served must have a plain name (letters, digits, '.', '_', '-')")
            if name in found and found[name] != run.resolve():
                raise LaminaError(f"two runs are named {name!r} ({found[name]} and {run}): serve one of them")
            found[name] = run.resolve()
    return found


@dataclass
class Endpoint:
    """One verb of one run, as the server offers it."""

    run: str
    verb: str
    help: str
    input: Arg | None  # the positional list of images, audio or texts (None: the verb takes none)
    options: tuple[Arg, ...]
    defaults: dict[str, Any]
    stream: bool
    call: Any  # call(inputs_or_None, emit_or_None, **options) -> dict

    @property
    def path(self) -> str:
        return f"/runs/{self.run}/{self.verb}"

    @property
    def uploads(self) -> bool:
        return self.input is not None and self.input.input in decode.DECODERS

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.verb,
            "path": self.path,
            "help": self.help,
            "input": {"name": self.input.dest, "kind": self.input.input} if self.input else None,
            "content_type": "multipart/form-data" if self.uploads else "application/json",
            "stream": self.stream,
            "options": [option_info(a, self.defaults.get(a.dest)) for a in self.options],
        }


def endpoints_of(name: str, run) -> list[Endpoint]:
    """`predict` and every verb of the run's task that reads a declared kind of input (or none),
    without the arguments that name files."""
    task = run.task
    served = [
        Endpoint(
            name,
            "predict",
            f"predict with this {task.name} run",
            Arg(("inputs",), {"nargs": "+"}, input=task.inputs),
            tuple(a for a in task.predict_args if not a.path),
            # predict hands its options to the task's own verb (detect, translate, ...): their defaults
            {k: v for verb in task.verbs for k, v in _defaults(getattr(task, verb.attr)).items()}
            | _defaults(task.predict),
            False,
            lambda items, emit, **o: run.predict(items, **o),
        )
    ]
    for verb in task.verbs:
        if verb.runs or verb.group:
            continue  # verbs over several runs, or that inspect training: not for a server
        positional = [a for a in verb.args if a.positional]
        if any(not a.input for a in positional) or len(positional) > 1:
            continue
        method = getattr(task, verb.attr)

        def call(items, emit, _verb=verb, **options):
            if emit is not None:
                options["emit"] = emit
            return run.call(_verb.name, *([items] if items is not None else []), **options)

        served.append(
            Endpoint(
                name,
                verb.name,
                verb.help,
                positional[0] if positional else None,
                tuple(a for a in verb.args if not a.positional and not a.path),
                _defaults(method),
                verb.stream,
                call,
            )
        )
    return served


def _defaults(method) -> dict[str, Any]:
    import inspect

    return {p.name: p.default for p in inspect.signature(method).parameters.values() if p.default is not p.empty}


def option_info(a: Arg, default: Any) -> dict[str, Any]:
    kind = option_type(a)
    info = {"name": a.dest, "type": kind.__name__, "help": a.options.get("help", "")}
    if default is not None:
        info["default"] = default
    if "choices" in a.options:
        info["choices"] = list(a.options["choices"])
    return info


def option_type(a: Arg) -> type:
    if a.options.get("action") in ("store_true", "store_false"):
        return bool
    return a.options.get("type", str)


# ----- requests -----------------------------------------------------------------------------------------
def parse_options(endpoint: Endpoint, given: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """The options of a request, typed as the verb declares them; unknown ones, wrong types and values
    over a limit are refused (422)."""
    declared = {a.dest: a for a in endpoint.options}
    options = {}
    if endpoint.stream and "stream" in given:  # the server's own option of a streaming verb
        try:
            options["stream"] = _coerce(given.pop("stream"), bool)
        except ValueError:
            raise Refused(422, "option 'stream' must be true or false") from None
    for key, value in given.items():
        if key not in declared:
            known = ", ".join(declared) or "none"
            raise Refused(422, f"unknown option {key!r} for {endpoint.path} (options: {known})")
        kind, a = option_type(declared[key]), declared[key]
        if value is None:
            continue
        try:
            value = _coerce(value, kind)
        except (TypeError, ValueError):
            raise Refused(422, f"option {key!r} must be a {kind.__name__}, not {value!r}") from None
        if "choices" in a.options and value not in a.options["choices"]:
            raise Refused(422, f"option {key!r} must be one of {', '.join(map(str, a.options['choices']))}")
        if kind is str and len(value) > limits.text_chars:
            raise Refused(
                422, f"option {key!r}: {len(value):,} characters, more than the limit of {limits.text_chars:,}"
            )
        if kind in (int, float) and key in limits.options and value > limits.options[key]:
            raise Refused(422, f"option {key!r} is {value:g}, more than the server's limit of {limits.options[key]:g}")
        options[key] = value
    return options


def _coerce(value: Any, kind: type) -> Any:
    """A JSON value, or a form field's text, as the option's type (no silent truncation of 2.5 to 2)."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "on", "yes", "false", "0", "off", "no", ""):
            return value.lower() in ("true", "1", "on", "yes")
        raise ValueError(value)
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise TypeError(value)
    if kind is int:
        number = float(value) if isinstance(value, str) else value
        if not float(number).is_integer():
            raise ValueError(value)
        return int(number)
    if kind is float:
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(value)
        return number
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def tidy(result: dict[str, Any], run: str, names: list[str] | None) -> dict[str, Any]:
    """The verb's dict as the client should see it: the run by name (not its path here) and each
    upload by its own file name."""
    result = dict(result)
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
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if endpoint.uploads:
        if content_type != "multipart/form-data":
            raise Refused(415, f"{endpoint.path} takes multipart/form-data (files under {endpoint.input.dest!r})")
        try:
            form = await request.form(max_files=limits.inputs, max_fields=64)
        except Refused:
            raise
        except Exception as exc:  # starlette's multipart errors (too many files, a broken body)
            status = getattr(exc, "status_code", 400)
            raise Refused(413 if "Too many" in str(getattr(exc, "detail", exc)) else status,
                          f"malformed upload: {getattr(exc, 'detail', exc)}") from None  # fmt: skip
        files, given = [], {}
        for key, value in form.multi_items():
            if hasattr(value, "filename") and hasattr(value, "read"):
                if key not in (endpoint.input.dest, "file", "files"):
                    raise Refused(422, f"unexpected file field {key!r}: send files as {endpoint.input.dest!r}")
                files.append((value.filename or f"upload-{len(files) + 1}", await value.read()))
            elif key in given:
                raise Refused(422, f"option {key!r} given twice")
            else:
                given[key] = value
        decode.count(len(files), endpoint.input.dest, limits)
        names = [name for name, _ in files]
        return [(endpoint.input.input, data, name) for name, data in files], given, names
    if content_type != "application/json":
        raise Refused(415, f"{endpoint.path} takes a JSON object (Content-Type: application/json)")
    body = await request.body()
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
        return refusal(exc.status_code, reason)

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
        return {
            "runs": [describe_run(name, run, endpoints) for name, run in loaded.items()],
            "limits": limits.to_dict(),
        }

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
                        yield json.dumps({"piece": value}) + "\n"
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


def describe_run(name: str, run, endpoints: dict) -> dict[str, Any]:
    info = run.info
    return {
        "name": name,
        "task": info["task"],
        "model": info["model"]["name"],
        "parameters": info["model"].get("parameters"),
        "status": info.get("status"),
        "metrics": info.get("metrics", {}),
        "headline": type(run.task).headline(info.get("metrics", {})),  # e.g. "test accuracy 92.76%"
        "created": info.get("created"),
        "verbs": [e.describe() for (n, _), e in endpoints.items() if n == name],
    }


def request_schema(endpoint: Endpoint, options: dict[str, dict]) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint, from its declared input and options."""
    json_types = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}
    properties = {
        k: {
            "type": json_types[o["type"]],
            "description": o["help"],
            **({"default": o["default"]} if "default" in o else {}),
        }
        for k, o in options.items()
    }
    if endpoint.stream:
        properties["stream"] = {"type": "boolean", "default": True, "description": "newline-delimited JSON pieces"}
    required = []
    if endpoint.input is not None:
        dest = endpoint.input.dest
        if endpoint.uploads:
            properties[dest] = {"type": "array", "items": {"type": "string", "format": "binary"}}
        else:
            properties[dest] = {"type": "array", "items": {"type": "string"}}
        required.append(dest)
    content = "multipart/form-data" if endpoint.uploads else "application/json"
    return {"required": True, "content": {content: {"schema": {"type": "object", "properties": properties,
                                                                "required": required}}}}  # fmt: skip


def from_environment():
    """The app of one uvicorn worker process (`lamina serve --workers N`), configured by the parent."""
    config = json.loads(os.environ[ENVIRONMENT])
    return create_app(config["runs"], Limits.from_dict(config["limits"]), config["device"], config["threads"])
