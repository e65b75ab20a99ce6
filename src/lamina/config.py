"""Run configuration: dataclass defaults < task defaults < YAML file < CLI flags < --set key=value.

Every knob lives in exactly one dataclass field, addressed by a dotted key such as ``optim.lr`` or
``train.time_budget``, and declared once with ``setting()``: its default, one line of help, and
optionally its command-line flag, its choices and its valid range. The CLI's flags, ``lamina config
TASK`` and the checks are all generated from these declarations.

The sections ``model``, ``optim`` and ``train`` are shared by every task. ``data`` is the task's own:
a task subclasses ``DataConfig`` with its data knobs (fairseq's task dataclasses), so nothing here
lists any task's settings. ``model.<anything>`` other than ``model.name`` goes into the model
builder's keyword arguments, so model families grow options without touching this file. The
resolved configuration is saved in the run directory and is what ``--resume`` starts from.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lamina.errors import UsageError, choices


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    choices: tuple[str, ...] = (),
    check: tuple[Callable[[Any], bool], str] | None = None,
    path: bool = False,
) -> Any:
    """A dataclass field that carries its own documentation.

    flag: the `lamina train` option that sets it (e.g. "--lr"); choices: the values allowed;
    check: (predicate, what the value must be), e.g. (lambda v: v > 0, "must be positive");
    path: a file or folder, saved absolute so the run works from any working directory.
    """
    meta = {"help": help, "flag": flag, "metavar": metavar, "choices": choices, "check": check, "path": path}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


NON_NEGATIVE = (lambda v: v >= 0, "must not be negative")
POSITIVE = (lambda v: v > 0, "must be positive")
PROBABILITY = (lambda v: 0 <= v <= 1, "must be a probability in [0, 1]")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass
class DataConfig:
    """What every task's data section holds; tasks subclass it with their own data.* settings."""

    name: str = setting(
        "", "a registered dataset name or a path (see: lamina data list)", flag="--data", metavar="NAME|PATH"
    )


@dataclass
class ModelConfig:
    name: str = setting("", "model name (see: lamina models TASK)", flag="--model", metavar="NAME")
    args: dict[str, Any] = field(default_factory=dict)  # model.<option>: the builder's keyword arguments


@dataclass
class OptimConfig:
    name: str = setting("sgd", "optimizer", flag="--optimizer", choices=("sgd", "adamw"))
    lr: float = setting(0.1, "peak learning rate", flag="--lr", metavar="X", check=POSITIVE)
    momentum: float = setting(0.9, "SGD momentum, or AdamW's beta1", check=(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    nesterov: bool = setting(True, "Nesterov momentum (SGD)")
    weight_decay: float = setting(5e-4, "decoupled weight decay (not on biases and norms)", check=NON_NEGATIVE)
    schedule: str = setting(
        "onecycle",
        "learning-rate schedule over the run's progress",
        flag="--schedule",
        choices=("constant", "cosine", "onecycle"),
    )
    warmup: float = setting(
        0.2,
        "fraction of training spent warming up (cosine, onecycle)",
        check=(lambda v: 0 <= v < 1, "must be in [0, 1)"),
    )
    grad_clip: float = setting(0.0, "max global gradient norm (0: no clipping)", check=NON_NEGATIVE)


@dataclass
class TrainConfig:
    epochs: int = setting(
        10,
        "passes over the training data (0: no limit, needs a time budget)",
        flag="--epochs",
        metavar="N",
        check=NON_NEGATIVE,
    )
    time_budget: float = setting(
        0.0,
        "seconds of wall clock for the whole run, final evaluation included (0: none)",
        flag="--time-budget",
        metavar="SECONDS",
        check=NON_NEGATIVE,
    )
    batch_size: int = setting(
        256,
        "samples per batch in each process (0: chosen from the size of the training set, where the task can)",
        flag="--batch-size",
        metavar="N",
        check=NON_NEGATIVE,
    )
    accumulate: int = setting(
        1,
        "batches whose gradients are summed before each optimizer step",
        check=(lambda v: v >= 1, "must be at least 1"),
    )
    label_smoothing: float = setting(
        0.0, "label smoothing of the cross-entropy", check=(lambda v: 0 <= v < 1, "must be in [0, 1)")
    )
    amp: str = setting(
        "auto",
        "mixed precision (auto: where the hardware computes it natively)",
        flag="--amp",
        choices=("auto", "bf16", "fp16", "off"),
    )
    channels_last: bool = setting(True, "channels-last memory format for convolutional models (oneDNN, cuDNN)")
    adversarial: str = setting(
        "off", "train on adversarial examples of each batch (Madry et al.; image classification)",
        choices=("off", "fgsm", "pgd"),
    )  # fmt: skip
    adversarial_eps: float = setting(0.1, "their L-infinity radius, in pixels of [0, 1]", check=(lambda v: 0 <= v <= 1,
                                     "must be in [0, 1]"))  # fmt: skip
    adversarial_steps: int = setting(3, "PGD steps of each (step size 2.5 eps / steps)", check=(lambda v: v >= 1,
                                     "must be at least 1"))  # fmt: skip
    device: str = setting(
        "auto",
        "where to train: auto, cpu, cuda, cuda:N or mps",
        flag="--device",
        metavar="auto|cpu|cuda[:N]|mps",
        check=(lambda v: bool(DEVICE.fullmatch(v)), "must be auto, cpu, cuda, cuda:N or mps"),
    )
    seed: int = setting(
        0,
        "random seed (data order, augmentation, initial weights)",
        flag="--seed",
        metavar="N",
        check=(lambda v: 0 <= v < 2**63, "must be in [0, 2**63)"),
    )
    eval_every: int = setting(0, "evaluate every N optimizer steps (0: at the end of every epoch)", check=NON_NEGATIVE)
    early_stop: int = setting(0, "stop after this many evaluations without improvement (0: never)", check=NON_NEGATIVE)
    keep: str = setting("best", "which weights model.safetensors holds at the end", choices=("best", "last"))
    init: str = setting(
        "", "start from the trained network of RUN, with a new head (transfer)", flag="--init", metavar="RUN", path=True
    )
    freeze: bool = setting(False, "with --init: train only the new head", flag="--freeze")
    tensorboard: bool = setting(
        False, "also log to RUN/tensorboard/ (needs: pip install lamina[tensorboard])", flag="--tensorboard"
    )
    quiet: bool = setting(False, "no progress output", flag="--quiet")


@dataclass
class RunConfig:
    task: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


SECTIONS = ("data", "model", "optim", "train")


def declared(config: RunConfig) -> dict[str, dataclasses.Field]:
    """Dotted key -> field, for every setting of this configuration (model options aside)."""
    out = {}
    for section in SECTIONS:
        for f in fields(type(getattr(config, section))):
            if f.name != "args":
                out[f"{section}.{f.name}"] = f
    return out


def flags(data: type[DataConfig] = DataConfig) -> dict[str, str]:
    """Dotted key -> `lamina train` flag, for every setting that declares one."""
    return {k: f.metadata["flag"] for k, f in declared(empty(data)).items() if f.metadata.get("flag")}


def valid_keys(config: RunConfig) -> list[str]:
    return ["task", *declared(config)]


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}; model arguments become model.<arg>."""
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted == "model.args":
            if not isinstance(value or {}, dict):
                raise UsageError("model.args must be a mapping of model options")
            flat.update({f"model.{k}": v for k, v in (value or {}).items()})
        elif isinstance(value, dict) and dotted in SECTIONS:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def parse_assignment(text: str, config: RunConfig | None = None) -> tuple[str, Any]:
    """'optim.lr=0.05' -> ('optim.lr', 0.05); values are read as YAML scalars or lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()  # YAML 1.1 reads off/no/yes as booleans; keep the word, the field's type decides
    return _dotted(key.strip(), config or RunConfig()), value


def _dotted(key: str, config: RunConfig) -> str:
    """A bare --set key is a model option (attention=dot is model.attention=dot), unless it is the
    name of a setting, which needs its section."""
    if "." in key or key in SECTIONS or key == "task":
        return key
    owners = [k for k in declared(config) if k.endswith(f".{key}")]
    if owners:
        raise UsageError(f"unknown setting {key!r} (did you mean {' or '.join(owners)}?)")
    return f"model.{key}"


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UsageError(f"config file {path} is not valid YAML: {problem}") from None
    if not isinstance(tree, dict):
        raise UsageError(f"config file {path} must hold a mapping of sections (data, model, optim, train)")
    return flatten(tree)


def _coerce(key: str, value: Any, annotation: Any, choice: tuple[str, ...]) -> Any:
    """Convert a YAML/CLI value to the field's declared type, with a one-line error when it cannot."""
    hint = annotation
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if hint is float:
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ValueError
            return float(value)
        if hint is str:
            if isinstance(value, bool) and choice:  # `amp: off` in a YAML file arrives as False
                return "on" if value else "off"
            return "" if value is None else str(value)
        if origin is list:
            items = value if isinstance(value, (list, tuple)) else [value]
            return [_coerce(key, v, args[0], ()) for v in items]
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        return value
    raise UsageError(f"{key}: {value!r} is not a valid {getattr(hint, '__name__', hint)}")


def apply(config: RunConfig, overrides: dict[str, Any], strict: bool = True) -> RunConfig:
    """Set dotted keys on a copy of config, checking names, types and choices. With strict=False,
    keys this configuration does not declare are skipped (a run saved by an older version)."""
    config = dataclasses.replace(config, **{s: dataclasses.replace(getattr(config, s)) for s in SECTIONS})
    config.model.args = dict(config.model.args)
    known = declared(config)
    for key, value in overrides.items():
        if key == "task":
            config.task = str(value)
            continue
        section, _, name = key.partition(".")
        if section == "model" and name and name != "name":
            if name == "args":
                if not isinstance(value, dict):
                    raise UsageError("model.args must be a mapping; set one option with model.<option>=value")
                config.model.args.update(value)
            else:
                config.model.args[name] = value
            continue
        if key not in known:
            if not strict and section in SECTIONS:
                continue
            raise UsageError(f"unknown setting {key!r}; valid settings: {choices(valid_keys(config))}")
        f = known[key]
        target = getattr(config, section)
        value = _coerce(key, value, typing.get_type_hints(type(target))[name], f.metadata.get("choices", ()))
        allowed = f.metadata.get("choices", ())
        if allowed and value not in allowed:
            raise UsageError(f"{key}: {value!r} is not one of {choices(allowed)}")
        setattr(target, name, value)
    return config


def empty(data_cls: type[DataConfig] = DataConfig) -> RunConfig:
    return RunConfig(data=data_cls())


def from_dict(tree: dict, data_cls: type[DataConfig] = DataConfig) -> RunConfig:
    """Rebuild a RunConfig from the dictionary saved in a run directory."""
    return apply(empty(data_cls), flatten(tree), strict=False)


def resolve(
    task_defaults: dict[str, Any],
    *,
    data: type[DataConfig] = DataConfig,
    base: RunConfig | None = None,
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> RunConfig:
    """Layer the sources of settings; later layers win.

    ``data`` is the task's data settings class. ``base`` replaces dataclass+task defaults (used by
    --resume, which starts from the saved config). When a time budget is given and no layer sets
    the number of epochs, training is bounded by time alone: that is what a user asking for "the
    best model in 75 s" means.
    """
    config = base or empty(data)
    layers: list[dict[str, Any]] = []
    if base is None:
        layers.append(task_defaults)
    if config_file:
        layers.append(load_yaml(config_file))
    layers.append({k: v for k, v in (flags or {}).items() if v is not None})
    layers.append(dict(parse_assignment(s, config) for s in (sets or [])))

    for layer in layers:
        config = apply(config, layer)
    user_keys = set().union(*[set(layer) for layer in layers[1 if base is None else 0 :]])
    if base is None and "train.time_budget" in user_keys and "train.epochs" not in user_keys:
        config.train.epochs = 0
    check(config)
    return config


def check(config: RunConfig) -> None:
    """The range of every setting, then the rules that tie settings together; each violation is one
    line naming the setting (by its flag where it has one)."""
    for key, f in declared(config).items():
        rule = f.metadata.get("check")
        value = getattr(getattr(config, key.partition(".")[0]), f.name)
        if rule and value is not None and not rule[0](value):
            raise UsageError(f"{f.metadata.get('flag') or key} {rule[1]}")
    t = config.train
    if t.epochs == 0 and t.time_budget <= 0:
        raise UsageError("give a positive number of epochs or a time budget (--epochs N or --time-budget S)")
    if t.freeze and not t.init:
        raise UsageError("--freeze needs --init RUN (a trained network to freeze)")


def make_paths_absolute(config: RunConfig) -> None:
    """Settings declared as paths are saved absolute, so the run works from any working directory."""
    for key, f in declared(config).items():
        section = getattr(config, key.partition(".")[0])
        value = getattr(section, f.name)
        if f.metadata.get("path") and value:
            setattr(section, f.name, str(Path(value).expanduser().resolve()))


def type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "") if not isinstance(annotation, type) else annotation.__name__


def describe(config: RunConfig) -> list[dict[str, Any]]:
    """Every setting with its value in `config` (the task's defaults), type, help, flag and choices."""
    rows = []
    for key, f in declared(config).items():
        section = getattr(config, key.partition(".")[0])
        hints = typing.get_type_hints(type(section))
        rows.append(
            {
                "key": key,
                "default": getattr(section, f.name),
                "type": type_name(hints[f.name]),
                "help": f.metadata.get("help", ""),
                "flag": f.metadata.get("flag"),
                "choices": list(f.metadata.get("choices", ())),
            }
        )
    return rows
