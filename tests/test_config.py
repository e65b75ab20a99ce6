import functools

import pytest

from lamina import config
from lamina.errors import UsageError
from lamina.tasks.classify import ClassifyData

DEFAULTS = {"data.name": "fashion-mnist", "model.name": "vgg-s", "optim.lr": 0.2}
resolve = functools.partial(config.resolve, data=ClassifyData)  # a task's data settings: classification's


def test_layers_apply_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.05\n  name: adamw\ntrain:\n  epochs: 3\nmodel:\n  name: mlp\n  hidden: [64]\n")
    cfg = resolve(
        DEFAULTS,
        config_file=f,
        flags={"train.epochs": 5, "model.name": None},
        sets=["optim.lr=0.01", "model.dropout=0.5"],
    )
    assert cfg.optim.lr == 0.01  # --set beats flags beats file beats task defaults
    assert cfg.optim.name == "adamw"  # from the file
    assert cfg.train.epochs == 5  # flag beats file
    assert cfg.model.name == "mlp"  # a flag left unset (None) does not override
    assert cfg.model.args == {"hidden": [64], "dropout": 0.5}
    assert cfg.data.name == "fashion-mnist"


def test_round_trip_through_dict():
    cfg = resolve(DEFAULTS, sets=["data.classes=[5, 6]", "model.width=8", "train.amp=off"])
    again = config.from_dict(cfg.to_dict(), ClassifyData)
    assert again == cfg


def test_time_budget_alone_means_no_epoch_limit():
    assert resolve(DEFAULTS, flags={"train.time_budget": 30}).train.epochs == 0
    assert resolve(DEFAULTS, flags={"train.time_budget": 30, "train.epochs": 2}).train.epochs == 2
    assert resolve(DEFAULTS).train.epochs == 10


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("optim.lrr=1", "unknown setting 'optim.lrr'"),
        ("lr=1", r"unknown setting 'lr' \(did you mean optim.lr\?\)"),
        ("name=x", r"did you mean data.name or model.name or optim.name\?"),
        (".lr=1", "unknown setting '.lr'"),
        ("train.epochs=two", "not a valid int"),
        ("train.epochs=1.5", "not a valid int"),
        ("optim.name=rmsprop", "not one of"),
        ("train.amp=maybe", "not one of"),
        ("justtext", "expects key=value"),
        ("optim.lr=-1", "--lr must be positive"),
        ("train.freeze=true", "--freeze needs --init"),
    ],
)
def test_bad_settings_are_one_line_usage_errors(assignment, message):
    with pytest.raises(UsageError, match=message) as info:
        resolve(DEFAULTS, sets=[assignment])
    assert "\n" not in str(info.value)


def test_a_bare_key_is_a_model_option(tmp_path):
    cfg = resolve(DEFAULTS, sets=["attention=dot", "model.hidden=64"])
    assert cfg.model.args == {"attention": "dot", "hidden": 64}
    f = tmp_path / "c.yaml"  # only on the command line: a config file names its sections
    f.write_text("hidden: 64\n")
    with pytest.raises(UsageError, match="unknown setting 'hidden'"):
        resolve(DEFAULTS, config_file=f)


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        resolve(DEFAULTS, config_file=f)
    with pytest.raises(UsageError, match="does not exist"):
        resolve(DEFAULTS, config_file=tmp_path / "missing.yaml")


def test_booleans_and_lists_are_coerced():
    cfg = resolve(DEFAULTS, sets=["data.flip=no", "data.classes=3", "train.channels_last=0"])
    assert cfg.data.flip is False and cfg.data.classes == [3] and cfg.train.channels_last is False


@pytest.mark.parametrize(
    "assignment",
    [
        "train.epochs=inf",
        "train.time_budget=nan",
        "train.time_budget=.inf",
        "train.label_smoothing=1.5",
        "data.crop_padding=-1",
        "optim.momentum=1",
        "optim.weight_decay=-0.1",
        "data.image_size=-3",
        "train.eval_every=-1",
        "train.early_stop=-2",
        "data.erase=2",
        "model.args=foo",
    ],
)
def test_out_of_range_values_are_refused(assignment):
    with pytest.raises(UsageError) as info:
        resolve(DEFAULTS, sets=[assignment])
    assert "\n" not in str(info.value)


def test_yaml_words_that_look_boolean_stay_words():
    cfg = resolve(DEFAULTS, sets=["train.amp=off", "data.name=yes", "data.flip=off"])
    assert cfg.train.amp == "off" and cfg.data.name == "yes" and cfg.data.flip is False


def test_non_utf8_config_file(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("optim:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8"):
        resolve(DEFAULTS, config_file=f)


def test_a_task_owns_its_data_settings():
    from lamina.tasks.lm import LanguageModelData

    cfg = config.resolve({}, data=LanguageModelData, sets=["data.seq_len=64"])
    assert cfg.data.seq_len == 64 and cfg.data.name == "shakespeare"
    with pytest.raises(UsageError, match="unknown setting 'data.seq_len'"):  # not a setting of classification
        resolve(DEFAULTS, sets=["data.seq_len=64"])
    with pytest.raises(UsageError, match=r"data.state_reset must be a probability in \[0, 1\]"):
        config.resolve({}, data=LanguageModelData, sets=["data.state_reset=2"])


def test_flags_and_descriptions_come_from_the_declarations():
    from lamina.tasks.translate import TranslateData

    flags = config.flags(TranslateData)
    assert (
        flags["optim.lr"] == "--lr" and flags["data.reverse"] == "--reverse" and flags["data.catalogs"] == "--catalogs"
    )
    assert "data.vocab_size" not in flags  # a --set key only
    rows = {r["key"]: r for r in config.describe(config.empty(TranslateData))}
    assert rows["data.vocab_size"]["default"] == 8000 and rows["data.vocab_size"]["type"] == "int"
    assert rows["optim.schedule"]["choices"] == ["constant", "cosine", "onecycle"] and rows["optim.lr"]["help"]


def test_saved_configs_of_older_versions_still_load():
    saved = resolve(DEFAULTS).to_dict()
    saved["data"]["seq_len"] = 128  # a key of the single data section runs once had
    assert config.from_dict(saved, ClassifyData).data.name == "fashion-mnist"


def test_devices_by_number():
    assert resolve(DEFAULTS, sets=["train.device=cuda:1"]).train.device == "cuda:1"
    with pytest.raises(UsageError, match="--device must be auto, cpu, cuda, cuda:N or mps"):
        resolve(DEFAULTS, sets=["train.device=gpu0"])
