"""Audio in: reading files, mixing down, resampling, and Wav2Vec2's feature extractor.

`Wav2Vec2FeatureExtractor` reproduces transformers' class of that name (and reads and writes its
`preprocessor_config.json`): every utterance is normalised to zero mean and unit variance, then
the batch is padded to its longest utterance. As in transformers, the statistics cover the real
samples only when an attention mask is returned; without one (the group-norm checkpoints such as
wav2vec2-base-960h) a padded utterance is normalised with its padding zeros included.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from polyformer.audio import resample
from polyformer.checkpoint_io import read_json
from polyformer.models.inputs import pad_rows

PREPROCESSOR_CONFIG = "preprocessor_config.json"

# transformers adds this inside the square root; part of what parity means.
NORM_EPSILON = 1e-7


def zero_mean_unit_var(values: np.ndarray, length: int | None = None) -> np.ndarray:
    """`values` `[samples]` float32, less the mean of its first `length` samples, over their
    standard deviation (population, epsilon 1e-7 inside the root). None: all samples."""
    real = values if length is None else values[:length]
    return (values - real.mean()) / np.sqrt(real.var() + NORM_EPSILON)


@dataclasses.dataclass(frozen=True)
class Wav2Vec2FeatureExtractor:
    """Raw mono waveforms -> `input_values` (and `attention_mask`) for Wav2Vec2.

    Field names are those of `preprocessor_config.json`.
    """

    feature_size: int = 1
    sampling_rate: int = 16000
    padding_value: float = 0.0
    do_normalize: bool = True
    return_attention_mask: bool = False
    padding_side: str = "right"

    def __post_init__(self):
        if self.feature_size != 1:
            raise ValueError(f"feature_size must be 1 (raw mono audio), got {self.feature_size}")
        if self.padding_side != "right":
            raise ValueError(f"only padding_side='right' is supported, got {self.padding_side!r}")
        if self.sampling_rate <= 0:
            raise ValueError(f"sampling_rate must be positive, got {self.sampling_rate}")

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> Wav2Vec2FeatureExtractor:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    def to_hf(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        }

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Wav2Vec2FeatureExtractor:
        """Reads `preprocessor_config.json` from the checkpoint directory `path`."""
        return cls.from_hf(read_json(path, PREPROCESSOR_CONFIG))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_hf(), indent=2, sort_keys=True) + "\n"
        (directory / PREPROCESSOR_CONFIG).write_text(text)

    def __call__(
        self,
        raw_speech: np.ndarray | Sequence[np.ndarray] | Sequence[float],
        *,
        sampling_rate: int | None = None,
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
    ) -> dict[str, np.ndarray]:
        """Normalises and pads a waveform or a batch of them.

        Args:
          raw_speech: one waveform `[samples]`, a batch `[batch, samples]`, or a list of
            waveforms of any lengths; mono, at `self.sampling_rate` (see `load_audio` and
            `resample` for other rates).
          sampling_rate: the rate of `raw_speech`; checked against the extractor's when given.
          padding: True or "longest" pads to the longest waveform; "max_length" to
            `max_length` samples (a longer waveform is an error); False requires equal lengths.
          pad_to_multiple_of: also round the padded length up to a multiple of this (fewer
            distinct shapes, so fewer jit compilations).
          return_attention_mask: default the config's `return_attention_mask`.

        Returns `{"input_values": float32 [batch, samples]}`, plus `"attention_mask"` int32
        `[batch, samples]` (1 on real samples) when asked for.
        """
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(
                f"audio at {sampling_rate} Hz given to a feature extractor for "
                f"{self.sampling_rate} Hz; resample it first (wav2vec2.processing.resample)"
            )
        if padding not in (True, False, "longest", "max_length"):
            raise ValueError(
                f"padding must be True, False, 'longest' or 'max_length', got {padding!r}"
            )
        waves = _as_waveforms(raw_speech)
        lengths = [len(w) for w in waves]
        target = max(lengths)
        if padding == "max_length":
            if max_length is None or max_length < target:
                raise ValueError(
                    f"padding='max_length' needs max_length >= the longest waveform ({target} "
                    f"samples), got {max_length}"
                )
            target = max_length
        if not padding and len(set(lengths)) > 1:
            raise ValueError(f"waveforms of different lengths {lengths} need padding=True")
        if padding and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        with_mask = return_attention_mask
        if with_mask is None:
            with_mask = self.return_attention_mask
        values, mask = pad_rows(waves, target, self.padding_value, np.float32)
        if self.do_normalize:
            # transformers normalises over the real samples only when it has a mask to say
            # where they end; otherwise over the padded row.
            by_mask = with_mask and bool(padding)
            for row, length in enumerate(lengths):
                values[row] = zero_mean_unit_var(values[row], length if by_mask else None)
                if by_mask:
                    values[row, length:] = self.padding_value
        out = {"input_values": values}
        if with_mask:
            out["attention_mask"] = mask
        return out


def _as_waveforms(raw_speech: Any) -> list[np.ndarray]:
    """One waveform or a batch -> a list of float32 `[samples]` arrays, checked."""
    if isinstance(raw_speech, np.ndarray):
        if raw_speech.ndim == 1:
            waves = [raw_speech]
        elif raw_speech.ndim == 2:
            waves = list(raw_speech)
        else:
            raise ValueError(
                f"audio of shape {raw_speech.shape}: expected [samples] or [batch, samples] "
                "(mono; mix multi-channel audio down first)"
            )
    elif isinstance(raw_speech, (list, tuple)) and raw_speech:
        first = raw_speech[0]
        batched = isinstance(first, (np.ndarray, list, tuple))
        waves = [np.asarray(w) for w in raw_speech] if batched else [np.asarray(raw_speech)]
    else:
        raise ValueError("give a waveform [samples], a batch [batch, samples] or a list of them")
    out = []
    for wave in waves:
        if wave.ndim != 1:
            raise ValueError(f"each waveform must be mono [samples], got shape {wave.shape}")
        if len(wave) == 0:
            raise ValueError("empty waveform")
        out.append(np.asarray(wave, np.float32))
    return out


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What `load_audio` did to a file: its own rate and channel count, and the conversions."""

    path: str
    sampling_rate: int
    channels: int
    seconds: float
    resampled_to: int | None
    mixed_down: bool

    def notes(self) -> list[str]:
        """The conversions as sentences, for a warning or the command line."""
        notes = []
        if self.mixed_down:
            notes.append(f"{self.path}: {self.channels} channels mixed down to mono")
        if self.resampled_to is not None:
            notes.append(
                f"{self.path}: resampled from {self.sampling_rate} Hz to {self.resampled_to} Hz"
            )
        return notes


def load_audio(path: str | os.PathLike, sampling_rate: int) -> tuple[np.ndarray, AudioInfo]:
    """Reads a sound file (WAV, FLAC, OGG: whatever libsndfile reads) as float32 mono
    `[samples]` at `sampling_rate` Hz: channels averaged, other rates resampled with soxr.

    Returns the waveform and an `AudioInfo` saying what was converted; nothing is converted
    silently, the caller reports `info.notes()`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no audio file at {path}")
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as e:
        raise ValueError(f"{path} is not a sound file libsndfile can read: {e}") from e
    if data.shape[0] == 0:
        raise ValueError(f"{path} holds no samples")
    channels = data.shape[1]
    audio = data.mean(axis=1) if channels > 1 else data[:, 0]
    audio = resample(audio, rate, sampling_rate)
    info = AudioInfo(
        path=str(path),
        sampling_rate=rate,
        channels=channels,
        seconds=data.shape[0] / rate,
        resampled_to=sampling_rate if rate != sampling_rate else None,
        mixed_down=channels > 1,
    )
    return audio, info
