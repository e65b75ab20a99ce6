"""Run configuration: dataclass defaults < task defaults < YAML file < CLI flags < --set key=value.

Every knob lives in exactly one dataclass field, addressed by a dotted key such as
``optim.lr`` or ``train.time_budget``. ``model.<anything>`` other than ``model.name`` goes into the
model builder's keyword arguments, so model families can grow options without touching this file.
The resolved configuration is saved in the run directory and is what ``--resume`` starts from.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lamina.errors import UsageError, choices


@dataclass
class DataConfig:
    name: str = ""  # a registered dataset name or a path
    val_fraction: float = 0.1  # held out from training (stratified, deterministic) when no val split exists
    classes: list[int] | None = None  # keep only these class indices (relabelled 0..k-1)
    per_class: int = 0  # at most this many training examples per class (0: all)
    image_size: int = 0  # side of the square images fed to the model (0: the dataset's own, or automatic)
    flip: bool = True  # random horizontal flips in training
    crop_padding: int = 2  # random crops after zero padding by this many pixels (0: off)
    erase: float = 0.0  # probability of random erasing per training image (0: off)
    tta: bool = True  # average predictions over the image and its mirror (when trained with flips)
    seq_len: int = 128  # characters per window of truncated back-propagation through time (lm)
    val: str = ""  # validation text file or folder (lm; default: the final val_fraction of the text)
    state_reset: float = 0.02  # chance per batch row that the carried recurrent state starts afresh (lm)
    catalogs: str = ""  # folder of gettext .mo/.po files to read instead of the system's (translate)
    reverse: bool = False  # translate the other way: target -> source (translate)
    vocab_size: int = 8000  # subword vocabulary, shared by both languages (translate)
    max_tokens: int = 100  # training pairs with a side longer than this many subwords are left out (translate)
    utterances: int = 20000  # training utterances synthesized for synth-speech (transcribe)
    spec_augment: bool = True  # time and frequency masks on training features (transcribe)


@dataclass
class ModelConfig:
    name: str = ""
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # constant | cosine | onecycle
    warmup: float = 0.2  # fraction of training spent warming up (cosine, onecycle)
    grad_clip: float = 0.0  # max global gradient norm (0: no clipping)


@dataclass
class TrainConfig:
    epochs: int = 10  # 0: no epoch limit (needs a time budget)
    time_budget: float = 0.0  # seconds of wall clock for the whole run, final evaluation included (0: none)
    batch_size: int = 256
    label_smoothing: float = 0.0
    amp: str = "auto"  # auto | bf16 | fp16 | off
    channels_last: bool = True  # memory format for convolutional models (faster with oneDNN and cuDNN)
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0
    eval_every: int = 0  # evaluate every N optimizer steps (0: at the end of every epoch)
    early_stop: int = 0  # stop after this many evaluations without improvement (0: never)
    keep: str = "best"  # best | last: which weights model.safetensors holds at the end
    init: str = ""  # run directory whose backbone initialises the model (transfer)
    freeze: bool = False  # with init: train only the new head
    quiet: bool = False


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
CHOICES = {
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("constant", "cosine", "onecycle"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "train.device": ("auto", "cpu", "cuda", "mps"),
    "train.keep": ("best", "last"),
}


def valid_keys() -> list[str]:
    keys = ["task"]
    for section in SECTIONS:
        cls = type(getattr(RunConfig(), section))
        keys += [f"{section}.{f.name}" for f in fields(cls)]
    return keys


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}; model arguments become model.<arg>."""
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted == "model.args":
            if not isinstance(value or {}, dict):
                raise UsageError("model.args must be a mapping of model options")
            flat.update({f"model.{k}": v for k, v in (value or {}).items()})
        elif isinstance(value, dict) and dotted in ("data", "model", "optim", "train"):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def parse_assignment(text: str) -> tuple[str, Any]:
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
    return _dotted(key.strip()), value


def _dotted(key: str) -> str:
    """A bare --set key is a model option (attention=dot is model.attention=dot), unless it is the
    name of a setting, which needs its section."""
    if "." in key or key in SECTIONS or key == "task":
        return key
    owners = [f"{s}.{key}" for s in SECTIONS if key in typing.get_type_hints(type(getattr(RunConfig(), s)))]
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


def _coerce(key: str, value: Any, annotation: Any) -> Any:
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
            if isinstance(value, bool) and key in CHOICES:  # `amp: off` in a YAML file arrives as False
                return "on" if value else "off"
            return "" if value is None else str(value)
        if origin is list:
            items = value if isinstance(value, (list, tuple)) else [value]
            return [_coerce(key, v, args[0]) for v in items]
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        return value
    raise UsageError(f"{key}: {value!r} is not a valid {getattr(hint, '__name__', hint)}")


def apply(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Set dotted keys on a copy of config, checking names, types and choices."""
    config = dataclasses.replace(config, **{s: dataclasses.replace(getattr(config, s)) for s in SECTIONS})
    config.model.args = dict(config.model.args)
    for key, value in overrides.items():
        if key == "task":
            config.task = str(value)
            continue
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise UsageError(f"unknown setting {key!r}; valid settings: {choices(valid_keys())}")
        target = getattr(config, section)
        if section == "model" and name != "name":
            if name == "args":
                if not isinstance(value, dict):
                    raise UsageError("model.args must be a mapping; set one option with model.<option>=value")
                config.model.args.update(value)
            else:
                config.model.args[name] = value
            continue
        declared = typing.get_type_hints(type(target))
        if name not in declared:
            raise UsageError(f"unknown setting {key!r}; valid settings: {choices(valid_keys())}")
        value = _coerce(key, value, declared[name])
        if key in CHOICES and value not in CHOICES[key]:
            raise UsageError(f"{key}: {value!r} is not one of {choices(CHOICES[key])}")
        setattr(target, name, value)
    return config


def from_dict(tree: dict) -> RunConfig:
    """Rebuild a RunConfig from the dictionary saved in a run directory."""
    return apply(RunConfig(), flatten(tree))


def resolve(
    task_defaults: dict[str, Any],
    *,
    base: RunConfig | None = None,
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> RunConfig:
    """Layer the sources of settings; later layers win.

    ``base`` replaces dataclass+task defaults (used by --resume, which starts from the saved config).
    When a time budget is given and no layer sets the number of epochs, training is bounded by time
    alone: that is what a user asking for "the best model in 75 s" means.
    """
    layers: list[dict[str, Any]] = []
    if base is None:
        layers.append(task_defaults)
    if config_file:
        layers.append(load_yaml(config_file))
    layers.append({k: v for k, v in (flags or {}).items() if v is not None})
    layers.append(dict(parse_assignment(s) for s in (sets or [])))

    config = base or RunConfig()
    for layer in layers:
        config = apply(config, layer)
    user_keys = set().union(*[set(layer) for layer in layers[1 if base is None else 0 :]])
    if base is None and "train.time_budget" in user_keys and "train.epochs" not in user_keys:
        config.train.epochs = 0
    check(config)
    return config


def check(config: RunConfig) -> None:
    """Ranges the types alone do not enforce; each violation is one line naming the setting."""
    t, o, d = config.train, config.optim, config.data
    if t.epochs < 0 or (t.epochs == 0 and t.time_budget <= 0):
        raise UsageError("give a positive number of epochs or a time budget (--epochs N or --time-budget S)")
    rules = [
        (t.time_budget >= 0, "--time-budget must be positive"),
        (t.batch_size >= 1, "--batch-size must be at least 1"),
        (0 <= t.seed < 2**63, "--seed must be in [0, 2**63)"),
        (o.lr > 0, "--lr must be positive"),
        (0 <= o.momentum < 1, "optim.momentum must be in [0, 1)"),
        (o.weight_decay >= 0, "optim.weight_decay must not be negative"),
        (0 <= o.warmup < 1, "optim.warmup must be in [0, 1)"),
        (o.grad_clip >= 0, "optim.grad_clip must not be negative (0: no clipping)"),
        (0 <= t.label_smoothing < 1, "train.label_smoothing must be in [0, 1)"),
        (t.eval_every >= 0, "train.eval_every must not be negative (0: every epoch)"),
        (t.early_stop >= 0, "train.early_stop must not be negative (0: never)"),
        (0 <= d.val_fraction < 1, "data.val_fraction must be in [0, 1)"),
        (d.per_class >= 0, "data.per_class must not be negative (0: all)"),
        (d.image_size >= 0, "data.image_size must not be negative (0: automatic)"),
        (d.crop_padding >= 0, "data.crop_padding must not be negative (0: off)"),
        (0 <= d.erase <= 1, "data.erase must be a probability in [0, 1]"),
        (d.seq_len >= 1, "data.seq_len must be at least 1"),
        (0 <= d.state_reset <= 1, "data.state_reset must be a probability in [0, 1]"),
        (not t.freeze or bool(t.init), "--freeze needs --init RUN (a trained network to freeze)"),
    ]
    for ok, message in rules:
        if not ok:
            raise UsageError(message)
