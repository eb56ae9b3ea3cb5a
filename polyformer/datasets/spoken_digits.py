"""Spoken digit and letter sequences synthesised with espeak-ng: speech with known transcripts.

Each example is a random sequence of symbols (`0`-`9`, `A`-`Z`) read aloud by espeak-ng with a
voice, speed and pitch drawn from its options, resampled to 16 kHz. The transcript is the
symbols separated by spaces (`"3 7 A 4"`), so a character-level CTC model learns to emit `3` for
the spoken word "three". A sequence goes to validation when a stable hash of its text says so:
validation sequences are never heard in training, in any voice.

espeak-ng (Debian package `espeak-ng`) must be installed; it is called as a subprocess.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import shutil
import subprocess
from collections.abc import Iterator

import numpy as np
import soundfile
import tensorflow_datasets as tfds

from polyformer.audio import resample
from polyformer.datasets.embedded import EmbeddedBuilder, split_of

SYMBOLS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# espeak-ng voices and variants (`espeak-ng --voices=en`, `--voices=variant`): several accents,
# male and female.
VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-us+f2",
    "en-gb+f3",
    "en-us+m3",
    "en-gb-x-rp+f4",
    "en-us-nyc+m5",
)
SAMPLING_RATE = 16000


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.cache
def espeak_voices() -> tuple[frozenset[str], frozenset[str]]:
    """The languages (`en-us`) and variants (`f2`) installed espeak-ng knows."""

    def column(args: list[str], index: int) -> frozenset[str]:
        listing = subprocess.run(["espeak-ng", *args], capture_output=True, text=True, check=True)
        rows = [line.split() for line in listing.stdout.splitlines()[1:]]
        return frozenset(row[index].removeprefix("!v/") for row in rows if len(row) > index)

    return column(["--voices"], 1), column(["--voices=variant"], 4)


def synthesize(
    text: str,
    *,
    voice: str = "en-us",
    speed: int = 175,
    pitch: int = 50,
    sampling_rate: int = SAMPLING_RATE,
) -> np.ndarray:
    """espeak-ng reading `text` -> float32 mono `[samples]` at `sampling_rate` Hz.

    `speed`: words per minute (espeak-ng accepts 80-450); `pitch`: 0-99.
    """
    if not espeak_available():
        raise FileNotFoundError(
            "espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)"
        )
    if not 80 <= speed <= 450 or not 0 <= pitch <= 99:
        raise ValueError(f"speed must be in [80, 450] and pitch in [0, 99], got {speed}, {pitch}")
    # espeak-ng falls back to its default voice, silently, for a name it does not know.
    languages, variants = espeak_voices()
    language, _, variant = voice.partition("+")
    if language not in languages or (variant and variant not in variants):
        raise ValueError(
            f"espeak-ng has no voice {voice!r}: give a language of `espeak-ng --voices` "
            "(e.g. en-us), optionally with +variant of `espeak-ng --voices=variant` (e.g. +f2)"
        )
    command = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise ValueError(f"espeak-ng failed for voice {voice!r}: {result.stderr.decode().strip()}")
    audio, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32")
    return resample(audio, rate, sampling_rate)


def spoken_text(symbols: str) -> str:
    """What espeak-ng is given for a transcript: symbols separated by commas, so that a lone
    `A` is the letter ("ay"), not the article."""
    return ", ".join(symbols.split())


@dataclasses.dataclass(frozen=True)
class Utterance:
    transcript: str
    voice: str
    speed: int
    pitch: int


def utterances(
    count: int,
    *,
    seed: int,
    min_symbols: int = 3,
    max_symbols: int = 6,
    symbols: str = SYMBOLS,
    voices: tuple[str, ...] = VOICES,
    speeds: tuple[int, int] = (160, 260),
    pitches: tuple[int, int] = (25, 75),
) -> list[Utterance]:
    """`count` random sequences with their voice, speed and pitch, reproducible from `seed`."""
    if not 1 <= min_symbols <= max_symbols:
        raise ValueError(f"need 1 <= min_symbols <= max_symbols, got {min_symbols}, {max_symbols}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        length = int(rng.integers(min_symbols, max_symbols + 1))
        transcript = " ".join(rng.choice(list(symbols), length))
        out.append(
            Utterance(
                transcript=transcript,
                voice=str(rng.choice(voices)),
                speed=int(rng.integers(speeds[0], speeds[1] + 1)),
                pitch=int(rng.integers(pitches[0], pitches[1] + 1)),
            )
        )
    return out


@dataclasses.dataclass
class SpokenDigitsConfig(tfds.core.BuilderConfig):
    """`num_utterances` drawn with `seed`; `validation_percent` of the distinct sequences (by
    hash) are held out; `symbols` is the alphabet (digits only: "0123456789")."""

    num_utterances: int = 2000
    seed: int = 0
    validation_percent: int = 10
    min_symbols: int = 3
    max_symbols: int = 6
    symbols: str = SYMBOLS


class SpokenDigits(EmbeddedBuilder):
    """Digit and letter sequences read by espeak-ng in several voices, 16 kHz int16 audio."""

    BUILDER_CONFIGS = [
        SpokenDigitsConfig(name="default", description="2000 utterances of 3-6 digits/letters."),
        SpokenDigitsConfig(
            name="digits", description="2000 utterances of 3-6 digits.", symbols="0123456789"
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    # int16 PCM: half the size of float32, and what a WAV file holds.
                    "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
                    "text": tfds.features.Text(),
                    "voice": tfds.features.Text(),
                    "speed": np.int32,
                    "pitch": np.int32,
                }
            ),
            homepage="https://github.com/espeak-ng/espeak-ng",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded: espeak-ng makes the audio.
        config = self.builder_config
        drawn = utterances(
            config.num_utterances,
            seed=config.seed,
            min_symbols=config.min_symbols,
            max_symbols=config.max_symbols,
            symbols=config.symbols,
        )
        by_split = {"train": [], "validation": []}
        for index, utterance in enumerate(drawn):
            by_split[split_of(utterance.transcript, config.validation_percent)].append(
                (index, utterance)
            )
        return {split: self._generate_examples(items) for split, items in by_split.items()}

    def _generate_examples(self, items) -> Iterator[tuple[int, dict]]:
        for index, u in items:
            audio = synthesize(
                spoken_text(u.transcript), voice=u.voice, speed=u.speed, pitch=u.pitch
            )
            pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
            yield (
                index,
                {
                    "audio": pcm,
                    "text": u.transcript,
                    "voice": u.voice,
                    "speed": u.speed,
                    "pitch": u.pitch,
                },
            )
