"""Translation: gettext and TSV readers, cleaning, hash split, subwords, encoder-decoders, search, end to end."""

import json
import math
import random
import shutil
import signal
import struct
from pathlib import Path

import pytest
import torch

import lamina
from conftest import CPU
from lamina.data import parallel
from lamina.data.batching import pad
from lamina.data.vocab import BOS, EOS, PAD, Tokenizer
from lamina.engine import checkpoint as ckpt
from lamina.errors import LaminaError, UsageError
from lamina.models import decoding, get_model, list_models
from test_cli import assert_one_line_error, run_cli

WORDS = {
    "the": "le",
    "cat": "chat",
    "dog": "chien",
    "big": "grand",
    "small": "petit",
    "red": "rouge",
    "eats": "mange",
    "sees": "voit",
    "file": "fichier",
    "open": "ouvre",
}
TINY = ["model.hidden=32", "model.embed=16", "data.vocab_size=300", *CPU]


def toy_pairs(n: int, seed: int = 0, longest: int = 6) -> list[tuple[str, str]]:
    """Word-for-word 'translations' of random word strings: learnable in seconds."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = [rng.choice(list(WORDS)) for _ in range(rng.randint(1, longest))]
        pairs.append((" ".join(words), " ".join(WORDS[w] for w in words)))
    return pairs


def write_tsv(path: Path, pairs, extra_lines=()) -> Path:
    lines = [f"{s}\t{t}\tCC-BY 2.0 (France) Attribution: tatoeba.org" for s, t in pairs]
    path.write_text("\n".join([*lines, *extra_lines]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def toy_tsv(tmp_path_factory) -> Path:
    return write_tsv(tmp_path_factory.mktemp("pairs") / "pairs.tsv", toy_pairs(600))


@pytest.fixture(scope="module")
def nmt_run(toy_tsv, tmp_path_factory):
    """A small attention model trained until it translates the toy language."""
    out = tmp_path_factory.mktemp("nmt") / "run"
    return lamina.train(
        "translate",
        data=str(toy_tsv),
        model="attention",
        epochs=40,
        lr=5e-3,
        batch_size=32,
        out=str(out),
        quiet=True,
        sets=[*TINY, "model.hidden=64", "model.embed=32"],
    )


# ----- gettext catalogs and cleaning ------------------------------------------------------------------
def write_mo(path: Path, messages: dict[str, str]) -> Path:
    """A GNU .mo file written from the format's specification (independent of the reader under test)."""
    keys = sorted(messages)
    ids, strs = [k.encode() for k in keys], [messages[k].encode() for k in keys]
    n, header = len(keys), 7 * 4
    offsets, data, start = [], b"", header + 16 * n
    for blob in ids + strs:
        offsets.append((len(blob), start + len(data)))
        data += blob + b"\0"
    table = b"".join(struct.pack("<II", *o) for o in offsets)
    path.write_bytes(struct.pack("<7I", 0x950412DE, 0, n, header, header + 8 * n, 0, 0) + table + data)
    return path


PO = r"""
msgid ""
msgstr "Content-Type: text/plain; charset=UTF-8\n"

msgid "_Open the file"
msgstr "_Ouvrir le fichier"

#, fuzzy
msgid "Close"
msgstr "Fermer"

msgctxt "menu"
msgid "Save as"
msgstr "Enregistrer sous"

msgid "%d file deleted"
msgid_plural "%d files deleted"
msgstr[0] "%d fichier supprimé"
msgstr[1] "%d fichiers supprimés"

msgid "first line\nsecond line"
msgstr "première ligne\nseconde ligne"

msgid "Not translated"
msgstr ""

msgid "Copy %s to %s"
msgstr "Copier %s"
"""


def test_gettext_reader_on_po_and_mo_fixtures(tmp_path):
    catalogs = tmp_path / "catalogs"
    catalogs.mkdir()
    (catalogs / "app.po").write_text(PO, encoding="utf-8")
    write_mo(
        catalogs / "tool.mo",
        {
            "": "Content-Type: text/plain; charset=UTF-8\n",
            "&Quit the program": "&Quitter le programme",
            "Print %2$s then %1$s": "Imprimer %1$s puis %2$s",
            "The file": "Le fichier",
            "Save as": "Enregistrer sous",
        },
    )
    write_mo(catalogs / "other.mo", {"The file": "Le fichier", "Save as": "Sauver sous"})
    corpus = parallel.load_parallel("gettext", catalogs=str(catalogs))
    pairs = dict(corpus.train + corpus.val + corpus.test)
    assert pairs["Open the file"] == "Ouvrir le fichier"  # accelerators stripped on both sides
    assert pairs["Quit the program"] == "Quitter le programme"
    assert pairs["%d file deleted"] == "%d fichier supprimé"  # a plural entry gives its singular form
    assert pairs["Print %2$s then %1$s"] == "Imprimer %1$s puis %2$s"  # reordered placeholders agree
    assert pairs["Save as"] == "Enregistrer sous"  # the most frequent translation of a duplicated source
    assert "Close" not in pairs  # fuzzy
    assert not any("line" in s for s in pairs)  # multi-line
    assert "Not translated" not in pairs and "Copy %s to %s" not in pairs  # empty, placeholders differ
    source = corpus.source
    assert set(source["catalogs"]) == {"app.po", "tool.mo", "other.mo"}
    assert source["dropped"] == {"multi-line": 1, "placeholders differ": 1}
    assert source["pairs"] == len(pairs) == 6 and len(source["sha256"]) == 64


@pytest.mark.parametrize(
    "source, target, expected",
    [
        ("_File", "_Fichier", ("File", "Fichier")),
        ("Op_en", "_Ouvrir", ("Open", "Ouvrir")),
        ("&Save", "&Enregistrer", ("Save", "Enregistrer")),
        ("Open", "開く(_O)", ("Open", "開く")),
        ("file_name is %s", "file_name vaut %s", ("file_name is %s", "file_name vaut %s")),  # an identifier, not a key
        ("Q&A and R&D", "Q&R et R&D", ("Q&A and R&D", "Q&R et R&D")),
        ("Read the Q&A", "Lire les Q&R", ("Read the Q&A", "Lire les Q&R")),  # an abbreviation, not a key
        ("E&xit", "&Quitter", ("Exit", "Quitter")),
        ("50 % done", "50 % de fait", ("50 % done", "50 % de fait")),  # a percentage, not printf's '% d'
        ("Sa_ve", "En_registrer", ("Save", "Enregistrer")),
        ("Disk  full\u00a0:", "Disque\u00a0plein :", ("Disk full :", "Disque plein :")),
        ("Line one\nline two", "Ligne un\nligne deux", "multi-line"),
        ("%s: %s", "%s : %s", "no words"),
        ("Open %s", "Ouvrir", "placeholders differ"),
        ("  ", "x", "empty"),
    ],
)
def test_cleaning_as_a_translator_would(source, target, expected):
    assert parallel.clean_pair(source, target) == expected


def test_unknown_language_lists_the_available_ones(capsys, monkeypatch, tmp_path):
    (tmp_path / "de" / "LC_MESSAGES").mkdir(parents=True)
    write_mo(tmp_path / "de" / "LC_MESSAGES" / "x.mo", {"Yes": "Ja"})
    monkeypatch.setattr(parallel, "LOCALE_DIR", tmp_path)
    code, _, err = run_cli(capsys, "train", "translate", "--data", "gettext:xx", "--epochs", "1")
    assert code == 1
    assert_one_line_error(err, "no gettext catalogs for 'xx'", "languages with catalogs here: de")


def test_data_prepare_builds_one_languages_corpus(capsys, monkeypatch, tmp_path):
    (tmp_path / "de" / "LC_MESSAGES").mkdir(parents=True)
    write_mo(tmp_path / "de" / "LC_MESSAGES" / "x.mo", {"Yes": "Ja", "Open the file": "Datei öffnen"})
    monkeypatch.setattr(parallel, "LOCALE_DIR", tmp_path)
    code, out, _ = run_cli(capsys, "data", "prepare", "gettext:de")
    assert code == 0 and out.startswith("gettext:de: ") and "1 catalog, 2 pairs" in out and "SHA-256 " in out
    code, _, err = run_cli(capsys, "data", "prepare", "gettext:xx")
    assert code == 1
    assert_one_line_error(err, "no gettext catalogs for 'xx'")


def test_hash_split_never_puts_a_sentence_in_two_splits():
    raw = [(f"sentence number {i % 500}", f"phrase {i}") for i in range(2000)]  # each source 4 times
    splits, counts = parallel.build_corpus(raw)
    seen = {name: {s for s, _ in pairs} for name, pairs in splits.items()}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert sum(map(len, seen.values())) == counts["pairs"] == 500 and counts["duplicates"] == 1500
    for name, sources in seen.items():
        assert all(parallel.split_of(s) == name for s in sources)
    assert 0.85 < len(seen["train"]) / 500 < 0.95  # about 90/5/5
    reversed_splits, _ = parallel.build_corpus(raw, reverse=True)
    assert all(parallel.split_of(s) == name for name, pairs in reversed_splits.items() for s, _ in pairs)


def test_tsv_reader_skips_malformed_lines_with_their_numbers(tmp_path, capsys):
    path = write_tsv(
        tmp_path / "p.tsv",
        [("Hello", "Bonjour"), ("Thanks", "Merci")],
        ["no tab here", "1\tGood night\t2\tBonne nuit", "a\tb\tc\td\te", "\tempty source"],
    )
    pairs = parallel.read_tsv(path)
    assert pairs == [("Hello", "Bonjour"), ("Thanks", "Merci"), ("Good night", "Bonne nuit")]  # Tatoeba's id format too
    err = capsys.readouterr().err
    assert "skipped 3 malformed lines" in err and "lines 3, 5, 6" in err
    (tmp_path / "bad.tsv").write_text("nothing\nat all\n")
    with pytest.raises(LaminaError, match="holds no source<TAB>target pairs"):
        parallel.read_tsv(tmp_path / "bad.tsv")


def test_tokenizer_round_trip_and_unseen_characters():
    texts = [t for pair in toy_pairs(200) for t in pair] + ["Ouvrir « %s » : échec"]
    tok = Tokenizer.train(texts, 300)
    for text in ["the big cat eats", "Ouvrir « %s » : échec"]:
        assert tok.decode(tok.encode([text])[0]) == text
    assert tok.unseen("the ☃ cat 日") == ["☃", "日"]
    assert tok.decode(tok.encode(["the ☃ cat"])[0]) == "the ☃ cat"  # spelled as bytes, not lost
    assert Tokenizer(tok.model_bytes).encode(["the cat"]) == tok.encode(["the cat"])


def test_length_bucketed_batches_are_reproducible_and_cover_every_pair():
    rng = random.Random(0)
    sources = [[5] * rng.randint(1, 30) for _ in range(500)]
    targets = [[6] * rng.randint(1, 30) for _ in range(500)]
    batches = parallel.PairBatches(sources, targets, 16, train=True, seed=3)
    order = batches.order(1)
    assert sorted(i for b in order for i in b) == list(range(500)) and order == batches.order(1) != batches.order(2)
    src, tgt_in, tgt_out = next(batches.epoch(1, start=2))
    assert src.shape[0] == len(order[2]) and (tgt_in[:, 0] == BOS).all()
    assert ((tgt_out == EOS).sum(1) == 1).all() and ((src == EOS).sum(1) == 1).all()
    pad_share = sum((b[0] == PAD).float().mean() for b in batches.epoch(1)) / len(batches)
    assert pad_share < 0.2  # sorted pools: far less padding than random batches (about 0.5 here)


def test_length_bucketed_batches_are_shared_between_processes_at_every_position():
    rng = random.Random(1)
    sources = [[5] * rng.randint(1, 30) for _ in range(103)]  # 103 = 6 batches of 16 and one of 7
    targets = [[6] * rng.randint(1, 30) for _ in range(103)]
    batches = parallel.PairBatches(sources, targets, 16, train=True, seed=3)
    order = batches.order(0)
    for world in (2, 3, 8):
        parts = [list(batches.epoch(0, 0, rank, world)) for rank in range(world)]
        assert all(len(p) == len(order) for p in parts)  # every process trains at every position: resume stays exact
        for b, rows in enumerate(order):
            got = sum(p[b][0].shape[0] for p in parts)
            assert got == max(len(rows), world)  # its rows shared out; a short batch lends each process one
    evaluation = parallel.PairBatches(sources, targets, 16)
    dealt = [len(list(evaluation.epoch(0, 0, rank, 3))) for rank in range(3)]
    assert sum(dealt) == len(evaluation) and max(dealt) - min(dealt) <= 1


# ----- models and search ------------------------------------------------------------------------------
MODELS = [
    ("seq2seq", {}),
    ("seq2seq", {"reverse_source": True, "cell": "gru"}),
    ("attention", {}),
    ("attention", {"attention": "dot", "layers": 2}),
    ("attention", {"attention": "general", "cell": "gru"}),
]


def tiny_model(name, **kwargs):
    torch.manual_seed(0)
    return get_model("translate", name, vocab_size=40, embed=8, hidden=12, dropout=0.0, **kwargs).eval()


def test_translation_models_are_registered():
    assert {"seq2seq", "attention"} <= {spec.name for spec in list_models("translate")}


@pytest.mark.parametrize("name, kwargs", MODELS)
def test_every_translation_model_trains_on_tiny_input(name, kwargs):
    model = tiny_model(name, **kwargs).train()
    src, tgt = torch.randint(4, 40, (3, 7)), torch.randint(4, 40, (3, 5))
    src[0, 5:] = PAD
    logits, loss = model(src, tgt, tgt)
    assert logits.shape == (3, 5, 40) and torch.isfinite(loss)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not dead, f"no gradient reached: {dead[:3]}"


@pytest.mark.parametrize("name, kwargs", MODELS)
def test_padding_never_leaks(name, kwargs):
    model = tiny_model(name, **kwargs)
    src = torch.tensor([[7, 8, 9, 3, 0, 0], [11, 12, 13, 14, 15, 3]])
    tgt = torch.tensor([[2, 20, 21, 0], [2, 22, 23, 24]])
    logits, _ = model(src, tgt)
    padded_src = torch.cat([src, torch.zeros(2, 4, dtype=torch.long)], 1)
    padded_tgt = torch.cat([tgt, torch.zeros(2, 3, dtype=torch.long)], 1)
    again, _ = model(padded_src, padded_tgt)
    assert torch.allclose(again[:, :4], logits, atol=1e-5)
    alone, _ = model(src[:1, :4], tgt[:1, :3])  # the first sentence without any padding, outside the batch
    assert torch.allclose(alone[0], logits[0, :3], atol=1e-5)


@pytest.mark.parametrize("score", ["additive", "dot", "general"])
def test_attention_weights_sum_to_one_over_real_source_tokens(score):
    model = tiny_model("attention", attention=score)
    src = torch.tensor([[7, 8, 9, 3, 0, 0], [11, 12, 13, 14, 15, 3]])
    memory, state = model.encode(src)
    _, _, weights = model.decode(torch.tensor([[2, 20, 21], [2, 22, 23]]), state, memory)  # (2, 3, 6)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3), atol=1e-5)
    assert (weights[0, :, 4:] == 0).all() and (weights[0, :, :4] > 0).all()


@pytest.mark.parametrize("name, kwargs", MODELS)
def test_beam_search_of_width_one_is_greedy_search(name, kwargs):
    model = tiny_model(name, **kwargs)
    with torch.no_grad():  # make EOS likely enough that some sentences end before the length limit
        model.head.bias[EOS] += 2.5
    src = torch.tensor([[7, 8, 9, 3, 0, 0], [11, 12, 13, 14, 15, 3], [5, 3, 0, 0, 0, 0]])
    memory, state = model.encode(src)
    greedy = decoding.greedy(model, memory, state, 12)
    beam = decoding.beam_search(model, memory, state, 1, 12)
    assert [h.tokens for h in greedy] == [h.tokens for h in beam]
    assert [h.score for h in greedy] == pytest.approx([h.score for h in beam], abs=1e-5)
    assert any(len(h.tokens) < 12 for h in greedy)  # some end at EOS (others may run to the limit)
    wide = decoding.beam_search(model, memory, state, 4, 12)
    assert len(wide) == 3 and all(len(h.tokens) <= 12 and EOS not in h.tokens for h in wide)
    if name == "attention":
        assert all(h.attention.shape == (len(h.tokens) + (len(h.tokens) < 12), 6) for h in wide)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_scores_are_the_models_own_log_probabilities(alpha):
    """A finished hypothesis's score is the teacher-forced log-probability of its tokens and EOS,
    divided by length ** alpha; and a wider beam never returns a worse-scored sentence than greedy."""
    model = tiny_model("attention")
    with torch.no_grad():
        model.head.bias[EOS] += 2.5
    src = torch.tensor([[7, 8, 9, 3, 0, 0], [11, 12, 13, 14, 15, 3], [5, 3, 0, 0, 0, 0]])
    memory, state = model.encode(src)
    greedy = decoding.greedy(model, memory, state, 12, alpha)
    wide = decoding.beam_search(model, memory, state, 4, 12, alpha)
    checked = 0
    for i, h in enumerate(wide):
        assert h.score >= greedy[i].score - 1e-5
        if len(h.tokens) == 12:  # ran to the limit: no EOS to score
            continue
        tgt_in, tgt_out = torch.tensor([[BOS, *h.tokens]]), torch.tensor([[*h.tokens, EOS]])
        with torch.no_grad():
            logits, _ = model(src[i : i + 1], tgt_in)
        logp = logits.log_softmax(-1).gather(-1, tgt_out[..., None]).sum()
        assert float(logp) / (len(h.tokens) + 1) ** alpha == pytest.approx(h.score, abs=1e-4)
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_reverse_source_feeds_the_encoder_the_source_backwards(cell):
    """The same weights reading [a b c EOS] with reverse_source, and [EOS c b a] without, compute the
    same thing: the real tokens are reversed, the padding stays at the end."""
    backwards = tiny_model("seq2seq", cell=cell, reverse_source=True)
    forwards = tiny_model("seq2seq", cell=cell)
    forwards.load_state_dict(backwards.state_dict())
    src = torch.tensor([[7, 8, 9, 3, 0, 0], [11, 12, 13, 14, 15, 3]])
    flipped = torch.tensor([[3, 9, 8, 7, 0, 0], [3, 15, 14, 13, 12, 11]])
    memory, state = backwards.encode(src)
    expected_memory, expected_state = forwards.encode(flipped)
    assert torch.equal(memory.outputs, expected_memory.outputs) and torch.equal(memory.mask, src != PAD)

    def hidden(s):  # an LSTM's state is (h, c)
        return s if cell == "gru" else torch.cat(s)

    assert torch.equal(hidden(state), hidden(expected_state))
    assert not torch.allclose(hidden(forwards.encode(src)[1]), hidden(state), atol=1e-3)  # the order matters
    tgt = torch.tensor([[2, 20, 21], [2, 22, 23]])
    assert torch.equal(backwards(src, tgt)[0], forwards(flipped, tgt)[0])


@pytest.mark.parametrize("kwargs", [{}, {"reverse_source": True, "cell": "gru"}])
def test_seq2seq_learns_to_translate_its_training_pairs(kwargs):
    """Without attention the whole source passes through one state: trained on 16 word-for-word pairs,
    greedy search gives back each reference exactly (untrained, it gives none of them)."""
    rng = random.Random(0)
    sources = [[rng.randrange(4, 14) for _ in range(rng.randint(2, 5))] for _ in range(16)]
    targets = [[w + 20 for w in s] for s in sources]
    src = pad([[*s, EOS] for s in sources])
    tgt_in, tgt_out = pad([[BOS, *t] for t in targets]), pad([[*t, EOS] for t in targets])
    torch.manual_seed(0)
    model = get_model("translate", "seq2seq", vocab_size=40, embed=16, hidden=32, dropout=0.0, **kwargs)

    @torch.no_grad()
    def translations():
        model.eval()
        memory, state = model.encode(src)
        return [h.tokens for h in decoding.greedy(model, memory, state, 12)]

    assert not set(map(tuple, translations())) & set(map(tuple, targets))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):  # exact after about 75 steps
        optimizer.zero_grad()
        _, loss = model(src, tgt_in, tgt_out)
        loss.backward()
        optimizer.step()
    assert translations() == targets, loss.item()


class ScriptedDecoder:
    """A 'model' whose next-token probabilities depend only on the output so far (a table), for search
    tests whose right answer is known. The state carries each row's output prefix, as an index."""

    A, B, C = 4, 5, 6
    TABLE = {(): {A: 0.6, B: 0.4}, (A,): {C: 0.9}, (A, C): {C: 0.9, 3: 0.05}, (A, C, C): {3: 0.95}, (B,): {3: 0.5}}

    def __init__(self):
        self.prefixes: list[tuple] = [()]

    def decode_step(self, tokens, state, memory):
        rows = []
        for prefix_id, token in zip(state[0, :, 0].long().tolist(), tokens.tolist()):
            prefix = self.prefixes[prefix_id] + ((token,) if token != BOS else ())
            self.prefixes.append(prefix)
            rows.append(len(self.prefixes) - 1)
        probs = torch.full((len(rows), 8), 1e-9)
        for r, prefix_id in enumerate(rows):
            table = self.TABLE.get(self.prefixes[prefix_id], {})
            rest = [t for t in range(3, 8) if t not in table]  # what the table leaves is spread evenly
            for t in rest:
                probs[r, t] = (1 - sum(table.values())) / len(rest) if rest else 0
            for t, p in table.items():
                probs[r, t] = p
        return probs.clamp_min(1e-9).log(), torch.tensor(rows, dtype=torch.float)[None, :, None], None


class OneSentence:
    mask = torch.ones(1, 1, dtype=torch.bool)

    def select(self, rows):
        memory = OneSentence()
        memory.mask = self.mask[rows]
        return memory


def test_beam_search_does_not_stop_at_short_poor_hypotheses():
    """'b' ends early (mean log-probability -0.80) while 'a c c' is still running (-0.19 when it ends):
    two finished hypotheses must not stop a search whose live one is better."""
    model, state = ScriptedDecoder(), torch.zeros(1, 1, 1)
    [greedy] = decoding.greedy(model, OneSentence(), state, 10)
    assert greedy.tokens == [4, 6, 6] and greedy.score == pytest.approx(math.log(0.6 * 0.9 * 0.9 * 0.95) / 4)
    for beam in (2, 3, 5):
        [best] = decoding.beam_search(model, OneSentence(), state, beam, 10)
        assert best.tokens == [4, 6, 6] and best.score == pytest.approx(greedy.score, abs=1e-6)
    [raw] = decoding.beam_search(model, OneSentence(), state, 2, 10, alpha=0.0)  # no length normalisation
    assert raw.tokens == [4, 6, 6] and raw.score == pytest.approx(math.log(0.6 * 0.9 * 0.9 * 0.95), abs=1e-6)


def test_evaluation_batches_bound_the_attention_tensor():
    lengths = [3] * 100 + [150, 900]
    batches = parallel.PairBatches([[5] * n for n in lengths], [[6] * n for n in lengths], 64)
    order = batches.order(0)
    assert sorted(i for rows in order for i in rows) == list(range(102)) and len(batches) == len(order)
    for rows in order:
        cells = len(rows) * max(lengths[i] + 1 for i in rows) ** 2
        assert len(rows) <= 64 and (cells <= parallel.MAX_CELLS or len(rows) == 1)
    assert [len(rows) for rows in order] == [64, 36, 1, 1]
    from lamina.tasks.translate import DECODE_CELLS, decode_batches, max_output_tokens

    sources = [[5] * n for n in [3] * 70 + [1000, 1000, 1000]]
    for beam in (1, 5):
        batches = decode_batches(sources, beam)
        assert sorted(i for rows in batches for i in rows) == list(range(73))
        for rows in batches:
            width = max(len(sources[i]) for i in rows) + 1
            assert len(rows) <= 64 and (
                len(rows) * beam * width * max_output_tokens(width) <= DECODE_CELLS or len(rows) == 1
            )
    assert [len(rows) for rows in decode_batches(sources, 5)] == [64, 6, 1, 1, 1]


# ----- end to end -------------------------------------------------------------------------------------
def test_tiny_corpus_end_to_end(nmt_run, capsys, tmp_path):
    run_dir = Path(nmt_run["run"])
    assert (run_dir / "tokenizer.model").is_file() and nmt_run["status"] == "complete"
    assert nmt_run["metrics"]["test"]["bleu"] > 90  # the toy language is learnt
    run = lamina.load(run_dir)
    [result] = run.translate(["the big dog sees the file"], beam=5)["results"]
    assert result["translation"] == "le grand chien voit le fichier"
    code, out, _ = run_cli(capsys, "translate", run_dir, "the cat", "small dog", "--beam", "1", "--json")
    got = json.loads(out)
    assert code == 0 and [t["translation"] for t in got["results"]] == ["le chat", "petit chien"]
    # `lamina evaluate` writes its translations into the run it measures: a copy, not the shared run.
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    code, out, err = run_cli(capsys, "evaluate", copy, "--json", "--beam", "3")
    evaluated = json.loads(out)
    assert evaluated["split"] == "test" and evaluated["decoding"]["beam"] == 3 and evaluated["metrics"]["bleu"] > 90
    assert set(evaluated["metrics"]["by_length"]) == {"1-5", "6-10", "11-15", "16+"}
    assert (copy / "translations-test.tsv").read_text().count("\n") == evaluated["n"] + 1
    other = write_tsv(tmp_path / "other.tsv", toy_pairs(30, seed=9))
    code, out, _ = run_cli(capsys, "evaluate", copy, "--data", other, "--json", "--beam", "1")
    assert json.loads(out)["split"] == "all" and json.loads(out)["n"] == 30


def test_translate_reads_stdin_and_handles_bad_input(nmt_run, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("the cat\n\nthe dog ☃\n" + "the big red dog " * 200 + "\n"))
    code, out, err = run_cli(capsys, "translate", nmt_run["run"], "--beam", "2")
    lines = out.split("\n")
    assert code == 0 and lines[0] == "le chat" and lines[1] == "" and lines[2].startswith("le chien")
    assert len(lines) == 5 and "input 2 is empty" in err and "never seen in training (☃)" in err
    assert "input 4 has" in err and "more than the" in err  # cut to the trained length, with a warning


def test_attention_map_is_drawn(nmt_run, capsys, tmp_path):
    out = tmp_path / "attention.png"
    code, _, err = run_cli(capsys, "translate", nmt_run["run"], "the big cat", "--show-attention", out)
    assert code == 0 and out.stat().st_size > 1000
    run = lamina.load(nmt_run["run"])
    for beam in (1, 3):  # two sentences of different lengths share a batch: each map has its own size
        results = run.translate(["the cat", "the small red dog sees"], beam=beam, attention=True)["results"]
        for result in results:
            weights = torch.tensor(result["attention"])
            assert (
                result["target_pieces"][-1] == "</s>"
                and len(result["source_pieces"]) == len(run.task.tokenizer.encode([result["input"]])[0]) + 1
            )
            assert weights.shape == (len(result["target_pieces"]), len(result["source_pieces"]))
            assert torch.allclose(weights.sum(1), torch.ones(len(weights)), atol=1e-4)


def test_seq2seq_trains_and_has_no_attention_to_draw(toy_tsv, capsys, tmp_path):
    out = tmp_path / "s2s"
    code, _, _ = run_cli(
        capsys,
        "train",
        "translate",
        "--data",
        toy_tsv,
        "--model",
        "seq2seq",
        "--epochs",
        "3",
        "--lr",
        "1e-2",
        "--out",
        out,
        "--quiet",
        *[a for s in TINY for a in ("--set", s)],
        "--set",
        "model.reverse_source=true",
    )
    assert code == 0
    info = json.loads((out / "lamina.json").read_text())
    assert info["model"]["name"] == "seq2seq" and info["model"]["args"]["reverse_source"] is True
    # An untrained network spreads its probability evenly: a loss of log(vocabulary). This one learnt.
    losses = [json.loads(line)["val_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and losses == sorted(losses, reverse=True)
    assert info["metrics"]["test"]["loss"] < math.log(info["model"]["args"]["vocab_size"]) - 2
    code, _, err = run_cli(capsys, "translate", out, "the cat", "--show-attention", tmp_path / "a.png")
    assert code == 1
    assert_one_line_error(err, "seq2seq model has no attention to draw")


def test_translate_errors(nmt_run, trained_run, capsys):
    code, _, err = run_cli(capsys, "translate", trained_run, "hello")
    assert code == 2
    assert_one_line_error(err, "a classify run does not translate (that is what translate runs do)")
    code, _, err = run_cli(capsys, "translate", nmt_run["run"], "hello", "--beam", "0")
    assert code == 2
    assert_one_line_error(err, "--beam must be at least 1")
    code, _, err = run_cli(capsys, "evaluate", trained_run, "--beam", "3")
    assert code == 2
    assert_one_line_error(err, "--beam does not apply to a classify run")
    with pytest.raises(UsageError, match="length-penalty"):
        lamina.load(nmt_run["run"]).translate(["the cat"], length_penalty=-1)


def test_luong_attention_by_a_bare_setting_and_misspelt_options_before_any_data(toy_tsv, capsys, tmp_path):
    out = tmp_path / "dot"
    code, _, _ = run_cli(
        capsys,
        "train",
        "translate",
        "--data",
        toy_tsv,
        "--epochs",
        "1",
        "--out",
        out,
        "--quiet",
        *[a for s in TINY for a in ("--set", s)],
        "--set",
        "attention=dot",
    )
    assert code == 0 and json.loads((out / "lamina.json").read_text())["model"]["args"]["attention"] == "dot"
    code, _, err = run_cli(capsys, "train", "translate", "--data", tmp_path / "missing.tsv", "--set", "atention=dot")
    assert code == 2
    assert_one_line_error(err, "model 'attention' has no option 'atention'")


def test_resume_after_interruption_continues_the_same_run(toy_tsv, tmp_path, monkeypatch):
    from lamina.tasks.translate import TranslateTask

    common = dict(data=str(toy_tsv), epochs=2, batch_size=32, quiet=True, sets=TINY)
    lamina.train("translate", out=str(tmp_path / "full"), **common)
    original, calls = TranslateTask.step, {"n": 0}

    def interrupted(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 7:
            signal.raise_signal(signal.SIGINT)
        return original(self, model, batch)

    monkeypatch.setattr(TranslateTask, "step", interrupted)
    assert lamina.train("translate", out=str(tmp_path / "cut"), **common)["status"] == "interrupted"
    monkeypatch.setattr(TranslateTask, "step", original)
    assert lamina.train("translate", out=str(tmp_path / "cut"), resume=True, quiet=True)["status"] == "complete"
    a = ckpt.load_trainer(tmp_path / "full" / "trainer.pt")["model"]
    b = ckpt.load_trainer(tmp_path / "cut" / "trainer.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "cut" / "tokenizer.model").read_bytes() == (tmp_path / "full" / "tokenizer.model").read_bytes()
