"""Image captioning: the caption grammar, the compositional split, the real formats, the models, the
shared search, and the task end to end."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lamina
from conftest import CPU, lamina_home
from lamina.cli import main
from lamina.data import captions
from lamina.data.vocab import BOS, EOS, WordVocab
from lamina.models import decoding, get_model

TINY = captions.CaptionSpec.for_size(64, train=60, val=12, test=24)
TINY_SETS = ["data.image_size=64", "data.scenes=60", "data.val_scenes=12", "data.test_scenes=24",
             "model.hidden=48", "model.embed=32", "model.widths=[8,16,24]", *CPU]  # fmt: skip
SMALL = dict(embed=24, hidden=40, widths=(8, 12, 16))


def split_of(root: Path, split: str) -> tuple[list[dict], dict[int, list[str]], dict[int, list[dict]]]:
    data = json.loads((root / "annotations" / f"captions_{split}.json").read_text())
    refs: dict[int, list[str]] = {}
    for a in data["annotations"]:
        refs.setdefault(a["image_id"], []).append(a["caption"])
    objects: dict[int, list[dict]] = {}
    for o in data["objects"]:
        objects.setdefault(o["image_id"], []).append(o)
    return data["images"], refs, objects


# ----- reading a caption back, to check it against the scene ------------------------------------------
NOUN = "|".join(sorted({re.escape(p) for names in captions.NOUNS for pair in names for p in pair}, key=len,
                       reverse=True))  # fmt: skip
COLOUR = "|".join(captions.COLOUR_NAMES)
PHRASE = re.compile(rf"\b(an?|one|two|three|four|five|six|seven|eight) (?:(small|large) )?(?:({COLOUR}) )?({NOUN})\b")
RELATION_WORDS = {w: r for r, (_, names) in captions.RELATIONS.items() for w in names}


def class_of(noun: str) -> int:
    return next(c for c, names in enumerate(captions.NOUNS) for pair in names if noun in pair)


def matches(phrase: re.Match, o: dict) -> bool:
    _, size, colour, noun = phrase.groups()
    return (o["label"] == class_of(noun) and (colour is None or o["colour"] == colour)
            and (size is None or TINY.size_word(o["side"]) == size))  # fmt: skip


def check_caption(text: str, objects: list[dict], photo: str) -> None:
    phrases = list(PHRASE.finditer(text))
    assert phrases, text
    counts = {c: sum(o["label"] == c for o in objects) for c in range(10)}
    said: dict[int, int] = {}  # how many of each class the caption names
    counted = set()  # classes named with a number: then every one of them is named
    for p in phrases:
        number, _, _, noun = p.groups()
        c = class_of(noun)
        n = 1 if number in ("a", "an", "one") else captions.NUMBERS.index(number)
        assert sum(matches(p, o) for o in objects) >= n, f"{text!r}: no {p.group(0)!r} in the scene"
        said[c] = said.get(c, 0) + n
        if n > 1:
            counted.add(c)
    for c, n in said.items():
        assert n <= counts[c] and (c not in counted or n == counts[c]), f"{text!r}: not {n} of class {c}"
    for first, second in zip(phrases, phrases[1:]):
        between = text[first.end() : second.start()].strip()
        if between in RELATION_WORDS:
            r = RELATION_WORDS[between]
            pairs = [
                (a, b) for a in objects for b in objects if a is not b and matches(first, a) and matches(second, b)
            ]
            assert any(captions.relation(a, b, TINY.image_size) == r for a, b in pairs), f"{text!r}: not {between}"
            for a in objects:
                for b in objects:
                    if r in ("front", "behind") and matches(first, a) and matches(second, b) and a is not b:
                        (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a["box"], b["box"]
                        if captions.relation(a, b, TINY.image_size) == r:  # one hides part of the other: boxes meet
                            assert ax1 <= bx2 and bx1 <= ax2 and ay1 <= by2 and by1 <= ay2
        else:
            assert between in ("and", ",", ""), f"{text!r}: {between!r} between two objects"
    backgrounds = [b for names in captions.BACKGROUNDS.values() for b in names]
    said = [b for b in backgrounds if text.endswith(" " + b)]
    if said:
        assert any(text.endswith(" " + b) for b in captions.BACKGROUNDS[photo])


def test_every_reference_is_true_of_its_scene(caption_folder):
    checked = 0
    for split in captions.SPLITS:
        images, refs, objects = split_of(caption_folder, split)
        for im in images:
            assert len(refs[im["id"]]) == captions.REFERENCES
            assert len(set(refs[im["id"]])) >= 2  # paraphrases, not five copies
            for text in refs[im["id"]]:
                check_caption(text, objects[im["id"]], im["photo"])
                checked += 1
    assert checked == captions.REFERENCES * (TINY.train + TINY.val + TINY.test)


def test_the_checker_catches_false_captions(caption_folder):
    images, refs, objects = split_of(caption_folder, "train")
    im = next(i for i in images if len(objects[i["id"]]) == 1)
    o = objects[im["id"]][0]
    other = next(k for k in captions.COLOUR_NAMES if k != o["colour"])
    wrong = next(r for r in refs[im["id"]] if o["colour"] in r).replace(o["colour"], other)
    with pytest.raises(AssertionError):
        check_caption(wrong, objects[im["id"]], im["photo"])


def test_held_out_combinations_appear_only_in_test(caption_folder):
    S = TINY.image_size
    for split in ("train", "val"):
        images, refs, objects = split_of(caption_folder, split)
        for im in images:
            assert captions.held_out(objects[im["id"]], S) == "" and im["compositional"] == ""
            for text in refs[im["id"]]:
                for c, colour in captions.HELD_COLOURS:
                    assert not any(f"{colour} {n[0]}" in text for n in captions.NOUNS[c]), text
    images, refs, objects = split_of(caption_folder, "test")
    kinds = [im["compositional"] for im in images]
    assert kinds.count("colour") and kinds.count("relation") and kinds.count("")
    for im in images:
        assert captions.held_out(objects[im["id"]], S) == im["compositional"]
    # a held-out relation is said in the scene's relation captions
    relation_scene = next(im for im in images if im["compositional"] == "relation")
    pair = captions.described_pair(objects[relation_scene["id"]], S)
    assert (pair[0]["label"], pair[2], pair[1]["label"]) in captions.HELD_RELATIONS


def test_scenes_are_deterministic_and_split_their_sources(tmp_path, caption_folder):
    with lamina_home(tmp_path):
        again = captions.build(TINY, processes=1)
    for split in captions.SPLITS:
        assert split_of(again, split)[1] == split_of(caption_folder, split)[1]
        first = sorted((caption_folder / split).glob("*.jpg"))[0]
        assert (again / split / first.name).read_bytes() == first.read_bytes()
    photos = {s: {im["photo"] for im in split_of(caption_folder, s)[0]} for s in captions.SPLITS}
    assert not photos["train"] & photos["test"] and not photos["val"] & photos["test"]


# ----- real formats ---------------------------------------------------------------------------------
def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / name)


def test_flickr_captions_txt(tmp_path, capsys):
    names = [f"{i}.jpg" for i in range(30)]
    write_images(tmp_path / "flickr" / "Images", names)
    lines = ["image,caption"] + [f"{n},A dog, brown and small, runs on the grass ." for n in names]
    lines += ["missing.jpg,a cat", f"{names[0]},   ", f"{names[1]}," + " word" * 40]
    (tmp_path / "flickr" / "captions.txt").write_text("\n".join(lines) + "\n")
    listings = captions.layout(tmp_path / "flickr")
    assert sum(len(v.captions) for v in listings.values()) == 30  # each image in one split
    assert listings["train"].skipped == {"missing image": 1, "empty caption": 1}
    assert captions.words("A dog, brown and small, runs .") == ["a", "dog", "brown", "and", "small", "runs"]
    every = {p.name: c for v in listings.values() for p, c in v.captions.items()}
    assert every[names[5]] == ["A dog, brown and small, runs on the grass ."]  # commas kept in the caption
    split = next(s for s, v in listings.items() if any(p.name == names[1] for p in v.captions))
    data = captions.load(listings[split], 32, split, max_words=30)
    err = capsys.readouterr().err
    assert "cut to their first 30 words" in err
    assert data.images.shape[1:] == (3, 32, 32)
    assert all(len(captions.words(c)) <= 30 for refs in data.captions for c in refs)
    if split == "train":
        assert "skipped 1 caption(s) or image(s): missing image" in err


def test_flickr_token_file_and_unreadable_images(tmp_path, capsys):
    names = [f"im{i}.jpg" for i in range(12)]
    write_images(tmp_path / "f", names)
    (tmp_path / "f" / "im3.jpg").write_text("not an image")
    token = "".join(f"{n}#{k}\tcaption {k} of {n}\n" for n in names for k in range(2))
    (tmp_path / "f" / "Flickr8k.token.txt").write_text(token)
    listings = captions.layout(tmp_path / "f")
    loaded = {s: captions.load(v, 24, s) for s, v in listings.items()}
    assert sum(len(d) for d in loaded.values()) == 11
    assert "unreadable image" in capsys.readouterr().err
    assert all(len(refs) == 2 for d in loaded.values() for refs in d.captions)


def test_coco_captions_json(tmp_path):
    write_images(tmp_path / "coco" / "train2017", ["a.jpg", "b.jpg"])
    write_images(tmp_path / "coco" / "val2017", ["c.jpg"])
    for split, files in (("train", ["a.jpg", "b.jpg"]), ("val", ["c.jpg"])):
        images = [{"id": i + 1, "file_name": f} for i, f in enumerate(files)]
        notes = [{"id": 10 * i + k, "image_id": i + 1, "caption": f"picture {k} of {f}"} for i, f in enumerate(files)
                 for k in range(3)]  # fmt: skip
        (tmp_path / "coco" / "annotations").mkdir(exist_ok=True)
        (tmp_path / "coco" / "annotations" / f"captions_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": notes}))  # fmt: skip
    listings = captions.layout(tmp_path / "coco")
    assert set(listings) == {"train", "val"}
    assert [len(c) for c in listings["train"].captions.values()] == [3, 3]
    assert list(listings["val"].captions)[0] == tmp_path / "coco" / "val2017" / "c.jpg"


def test_a_lone_coco_file_is_split_by_hash_and_finds_its_images(tmp_path):
    names = [f"{i:03d}.jpg" for i in range(40)]
    write_images(tmp_path / "coco" / "train2017", names)
    images = [{"id": i, "file_name": n} for i, n in enumerate(names)]
    notes = [{"id": i, "image_id": i, "caption": f"thing {i}"} for i in range(40)] + [{"id": 99, "image_id": 0}]
    file = tmp_path / "coco" / "annotations" / "captions_train2017.json"
    file.parent.mkdir()
    file.write_text(json.dumps({"images": images, "annotations": notes}))
    listings = captions.layout(file)
    assert set(listings) == set(captions.SPLITS) and all(listings[s].captions for s in captions.SPLITS)
    assert sum(len(v.captions) for v in listings.values()) == 40
    assert listings["train"].skipped == {"empty caption": 1}  # an annotation without a caption
    assert next(iter(listings["train"].captions)).parent == tmp_path / "coco" / "train2017"


@pytest.mark.parametrize(
    "content, message",
    [
        ({"images": [{"id": 1}], "annotations": []}, "not COCO captions JSON"),
        ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": ["text"]}, "not COCO captions JSON"),
        ({"images": [], "annotations": []}, "lists no images"),
        ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": "x"}]},
         "none of its images is in"),
    ],
)  # fmt: skip
def test_bad_coco_files_are_one_line_errors(tmp_path, content, message):
    from lamina.errors import LaminaError

    (tmp_path / "captions.json").write_text(json.dumps(content))
    with pytest.raises(LaminaError, match=message):
        captions.layout(tmp_path / "captions.json")


def test_too_few_objects_for_relations_is_refused(caption_folder, capsys):
    assert main(["train", "caption", "--data", str(caption_folder), "--set", "data.max_objects=1"]) == 2
    assert "must be from 2 to 8" in capsys.readouterr().err


def test_word_vocabulary_threshold():
    vocab = WordVocab.build([["a", "dog"], ["a", "cat"], ["a", "dog"]], min_count=2)
    assert vocab.words == ["a", "dog"]
    ids = vocab.encode(["a", "cat", "dog"])
    assert vocab.tokens(ids) == ["a", "<unk>", "dog"] and vocab.decode([*ids, EOS]) == "a <unk> dog"


# ----- models and the search ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["show-attend-tell", "show-tell"])
def test_models_shapes_and_gradients(name):
    model = get_model("caption", name, vocab_size=30, **SMALL)
    images = torch.randint(0, 255, (3, 3, 48, 48), dtype=torch.uint8)
    tgt = torch.randint(4, 30, (3, 7))
    logits, losses = model(images, tgt, tgt)
    assert logits.shape == (3, 7, 30) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_attention_sums_to_one_over_the_whole_grid():
    model = get_model("caption", "show-attend-tell", vocab_size=30, **SMALL).eval()
    images = torch.randint(0, 255, (2, 3, 48, 48), dtype=torch.uint8)
    memory, state = model.encode(images)
    assert memory.outputs.shape[1] == (48 // model.encoder.stride) ** 2  # a cell per 8x8 pixels, all of them
    assert memory.mask.all()
    _, _, weights = model.decode_step(torch.full((2,), BOS), state, memory)
    assert torch.allclose(weights.sum(-1), torch.ones(2)) and (weights > 0).all()
    # an object moved to another corner moves the features under it: the grid is not pooled away
    a = torch.zeros(1, 3, 48, 48, dtype=torch.uint8)
    b = a.clone()
    a[..., :8, :8], b[..., -8:, -8:] = 255, 255
    fa, fb = model.encode(a)[0].outputs[0], model.encode(b)[0].outputs[0]
    assert not torch.allclose(fa[0], fb[0]) and not torch.allclose(fa[-1], fb[-1])


@pytest.mark.parametrize("name", ["show-attend-tell", "show-tell"])
def test_each_model_overfits_a_few_images(name):
    torch.manual_seed(0)
    model = get_model("caption", name, vocab_size=20, dropout=0.0, **SMALL)
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    sentences = [[4, 5, 6], [7, 8, 9, 10], [11, 5, 12], [13, 14]]
    tgt_in = torch.tensor([[BOS, *s] + [0] * (4 - len(s)) for s in sentences])
    tgt_out = torch.tensor([[*s, EOS] + [0] * (4 - len(s)) for s in sentences])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, losses = model(images, tgt_in, tgt_out)
        opt.zero_grad()
        losses["xent"].backward()
        opt.step()
    assert losses["xent"] < 0.05
    model.eval()
    memory, state = model.encode(images)
    hyps = decoding.search(model, memory, state, 1, 8, start=torch.full((4,), BOS))
    assert [h.tokens for h in hyps] == sentences


def test_beam_of_one_is_greedy():
    torch.manual_seed(1)
    model = get_model("caption", "show-attend-tell", vocab_size=25, **SMALL).eval()
    images = torch.randint(0, 255, (5, 3, 40, 40), dtype=torch.uint8)
    memory, state = model.encode(images)
    start = torch.full((5,), BOS)
    greedy = decoding.greedy(model, memory, state, 12, 1.0, start)
    beam = decoding.beam_search(model, memory, state, 1, 12, 1.0, start)
    assert [h.tokens for h in greedy] == [h.tokens for h in beam]
    assert all(torch.allclose(g.attention, b.attention, atol=1e-6) for g, b in zip(greedy, beam))


# ----- the task end to end ---------------------------------------------------------------------------
def test_train_save_load_caption_evaluate(caption_run, caption_folder, tmp_path, capsys):
    caption_run = Path(shutil.copytree(caption_run, tmp_path / "run"))  # evaluate writes its files into the run
    info = json.loads((caption_run / "lamina.json").read_text())
    assert info["task"] == "caption" and "bleu4" in info["metrics"]["test"] and info["meta"]["words"]
    run = lamina.load(caption_run)
    files = sorted((caption_folder / "test").glob("*.jpg"))[:3]
    first = run.caption([str(f) for f in files], beam=3)
    again = lamina.load(caption_run).caption([str(f) for f in files], beam=3)
    assert [r["caption"] for r in first["results"]] == [r["caption"] for r in again["results"]]
    assert all(set(r["words"]) <= set(info["meta"]["words"]) | {"<unk>"} for r in first["results"])
    # the same image in memory captions as from its file
    assert run.caption([Image.open(files[0])], beam=3)["results"][0]["caption"] == first["results"][0]["caption"]
    plot = tmp_path / "att.png"
    assert main(["caption", str(caption_run), str(files[0]), str(tmp_path / "nowhere.jpg"), "--show-attention",
                 str(plot), "--json"]) == 1  # fmt: skip
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert "error" in result["results"][1] and "no such file" in out.err and plot.stat().st_size > 5000
    assert result["results"][0]["plot"] == str(plot)
    assert main(["evaluate", str(caption_run), "--json", "--beam", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    m = report["metrics"]
    assert {"bleu1", "bleu4", "cider", "rouge_l", "sacrebleu", "grounding_ratio", "by_objects"} <= set(m)
    assert report["n"] == TINY.test and {"colour", "relation", "familiar"} == set(m["by_kind"])
    assert 0 <= m["bleu4"] <= 1 and m["grounding_share"] > 0
    table = caption_run / "captions-test.tsv"
    assert len(table.read_text().splitlines()) == TINY.test + 1 and (caption_run / "gallery.png").exists()


def test_attention_is_returned_per_word(caption_run, caption_folder):
    image = sorted((caption_folder / "test").glob("*.jpg"))[0]
    r = lamina.load(caption_run).caption([str(image)], beam=1, attention=True)["results"][0]
    grids = np.array(r["attention"])
    assert grids.shape[0] in (len(r["words"]), len(r["words"]) + 1) and grids.shape[1] == grids.shape[2]
    assert np.allclose(grids.sum((1, 2)), 1, atol=1e-4)


def test_grounding_measures_mass_inside_the_named_box(caption_run):
    run = lamina.load(caption_run)
    task = run.task
    task.use_meta(run.meta)
    side = 8  # a 64 px image, 8 x 8 cells
    data = captions.CaptionSet(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), [["a dress"]], ["x"],
                               [[{"label": 3, "box": [0, 0, 16, 16]}]])  # fmt: skip
    inside = torch.zeros(side * side)
    inside[[0, 1, side, side + 1]] = 0.25  # all of the attention on the dress's 2 x 2 cells
    dress = task.vocab.encode(["dress"])[0]
    hyp = decoding.Hypothesis([dress], 0.0, torch.stack([inside, torch.full((side * side,), 1 / 64)]))
    g = task.grounding([hyp], data)
    assert g["grounding_mass"] == pytest.approx(1.0) and g["grounding_ratio"] == pytest.approx(16.0)
    uniform = decoding.Hypothesis([dress], 0.0, torch.full((2, side * side), 1 / 64))
    assert task.grounding([uniform], data)["grounding_ratio"] == pytest.approx(1.0)


def test_bad_runs_and_init(tmp_path, capsys, caption_folder, trained_run):
    assert main(["caption", str(trained_run), "x.jpg"]) != 0
    assert "caption" in capsys.readouterr().err
    code = main(["train", "caption", "--data", str(caption_folder), "--init", str(trained_run), "--epochs", "1",
                 "--out", str(tmp_path / "r"), *sum((["--set", s] for s in TINY_SETS), [])])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "does not fit the caption encoder" in err[0]
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "lamina.json").write_text(json.dumps({"task": "lm", "model": {"name": "lstm", "args": {}}}))
    assert main(["train", "caption", "--data", str(caption_folder), "--init", str(lm), "--epochs", "1"]) == 1
    assert "is a 'lm' run, not a 'caption' or 'classify' run" in capsys.readouterr().err


def test_encoder_starts_from_a_classify_resnet(tmp_path):
    from lamina.models.resnet import load_features

    classifier = get_model("classify", "resnet8", in_channels=1, num_classes=10)
    model = get_model("caption", "show-attend-tell", vocab_size=10)
    loaded = load_features(model.encoder.features, classifier.state_dict())
    assert loaded and torch.equal(model.encoder.features[1][0].conv1.weight, classifier.features[1][0].conv1.weight)
    model.encoder.freeze()
    model.train()
    assert not model.encoder.features.training and not any(p.requires_grad for p in model.encoder.features.parameters())


def test_caption_resumes_exactly(tmp_path, monkeypatch, caption_folder):
    """Length-bucketed batches with a reference drawn per (epoch, image), cut mid-epoch."""
    from lamina.tasks.caption import CaptionTask
    from test_resume import assert_resumed_exactly, train_interrupted_and_resumed

    sets = [*TINY_SETS, "train.batch_size=8", "train.eval_every=4"]
    common = dict(data=str(caption_folder), epochs=2, quiet=True, sets=sets)
    train_interrupted_and_resumed("caption", CaptionTask, common, 6, tmp_path, monkeypatch)
    assert_resumed_exactly(tmp_path / "full", tmp_path / "cut")


def test_training_batches_see_every_reference_and_group_lengths(caption_folder):
    task_data = captions.load(captions.layout(caption_folder)["train"], 64, "train")
    vocab = WordVocab.build(captions.words(c) for refs in task_data.captions for c in refs)
    encoded = [[vocab.encode(captions.words(c)) for c in refs] for refs in task_data.captions]
    batches = captions.CaptionBatches(task_data, encoded, 8, torch.device("cpu"), train=True, seed=3)
    seen = {(i, k) for e in range(12) for i, k in enumerate(batches.picks(e))}
    assert len(seen) > 0.9 * len(task_data) * captions.REFERENCES  # the references change with the epoch
    picks = batches.picks(0)
    order = batches.order(0, picks)
    assert sorted(i for rows in order for i in rows) == list(range(len(task_data)))
    spread = [max(len(encoded[i][picks[i]]) for i in rows) - min(len(encoded[i][picks[i]]) for i in rows)
              for rows in order]  # fmt: skip
    assert np.mean(spread) <= 3  # captions of similar length share a batch
    images, tgt_in, tgt_out = next(iter(batches.epoch(0)))
    assert (tgt_in[:, 0] == BOS).all() and tgt_in.shape == tgt_out.shape and images.dtype == torch.uint8
