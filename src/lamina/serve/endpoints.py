"""What a server offers, read off the task declarations: the runs it serves (by name), and for each
run its endpoints (a verb, its input and its options), their documentation and how a request's
options are typed and bounded. No task is named here."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.commands import Arg
from lamina.errors import LaminaError
from lamina.serve import inputs as decode
from lamina.serve.inputs import Refused
from lamina.serve.limits import Limits

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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
        except (TypeError, ValueError, OverflowError):
            raise Refused(422, f"option {key!r} must be a {kind.__name__}, not {str(value)[:40]!r}") from None
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
        if not float(number).is_integer() or abs(number) >= 2**63:
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
