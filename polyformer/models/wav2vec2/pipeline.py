"""Speech recognition with a Wav2Vec2ForCTC checkpoint: audio files or arrays in, text out.

`pf.pipeline("automatic-speech-recognition", path)` builds `AutomaticSpeechRecognitionPipeline`
from a checkpoint directory holding config.json, the weights, preprocessor_config.json and
vocab.json. Audio at another sample rate is resampled (soxr) and multi-channel audio is mixed
down; both are reported, as a warning and in the result's "conversions". Audio longer than
`chunk_length_s` is transcribed in overlapping chunks stitched as transformers' pipeline does:
each chunk's logits of the stride regions (the overlap, `stride_length_s` on each side) are
dropped, the rest concatenated, and the whole decoded once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from flax import nnx

from polyformer.models.wav2vec2.model import Wav2Vec2ForCTC
from polyformer.models.wav2vec2.processing import (
    AudioInfo,
    Wav2Vec2FeatureExtractor,
    load_audio,
    resample,
)
from polyformer.models.wav2vec2.tokenizer import Wav2Vec2CTCTokenizer, offsets_in_seconds

Audio = str | os.PathLike | np.ndarray | dict


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Samples `[start, end)` of the audio, of which the first `left` and last `right` overlap
    a neighbouring chunk and are dropped after the forward pass."""

    start: int
    end: int
    left: int
    right: int


def chunk_spans(
    num_samples: int, chunk_len: int, stride_left: int, stride_right: int
) -> list[Chunk]:
    """transformers' `chunk_iter`: chunks of `chunk_len` samples every `chunk_len - stride_left
    - stride_right`; the first has no left stride, the last (the one reaching the end) no right
    stride, and a chunk no longer than its left stride is skipped."""
    if chunk_len <= stride_left + stride_right:
        raise ValueError(
            f"chunk length ({chunk_len} samples) must exceed the strides together "
            f"({stride_left} + {stride_right})"
        )
    step = chunk_len - stride_left - stride_right
    chunks = []
    for start in range(0, num_samples, step):
        end = min(start + chunk_len, num_samples)
        is_last = start + chunk_len >= num_samples
        left = 0 if start == 0 else stride_left
        if end - start > left:
            chunks.append(Chunk(start, end, left, 0 if is_last else stride_right))
        if is_last:
            break
    return chunks


def check_chunking(chunk_length_s: Any, stride_length_s: Any) -> None:
    """Raises ValueError unless chunk_length_s is a finite number >= 0 and stride_length_s is
    None or one or two finite numbers >= 0 (a negative stride would leave gaps untranscribed)."""
    strides = stride_length_s if isinstance(stride_length_s, (tuple, list)) else [stride_length_s]
    for name, value in [
        ("chunk_length_s", chunk_length_s),
        *(("stride_length_s", s) for s in strides),
    ]:
        if value is None and name == "stride_length_s":
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    if isinstance(stride_length_s, (tuple, list)) and len(stride_length_s) != 2:
        raise ValueError(
            f"stride_length_s must be one number or (left, right), got {stride_length_s!r}"
        )


def stride_frames(chunk: Chunk, samples_per_frame: int) -> tuple[int, int]:
    """The frames `[first, last)` of a chunk's logits that are kept: its strides converted to
    frames with transformers' rounding (`rescale_stride`)."""
    samples = chunk.end - chunk.start
    frames = int(round(samples / samples_per_frame))
    left = int(round(chunk.left / samples * frames))
    right = int(round(chunk.right / samples * frames))
    return left, frames - right


def _check_finite(audio: np.ndarray, source: str) -> None:
    """NaN or inf samples would transcribe as "" without a word."""
    bad = np.count_nonzero(~np.isfinite(audio))
    if bad:
        raise ValueError(f"{source}: {bad} of {audio.size} samples are NaN or inf; expected finite")


@nnx.jit
def _logits(model, input_values):
    return model(input_values).logits


@dataclasses.dataclass
class AutomaticSpeechRecognitionPipeline:
    """Transcribes speech with greedy CTC decoding.

    `pipe("speech.wav")` returns `{"text": ...}`; a list of inputs gives a list of results.
    An input is a sound file path (anything libsndfile reads: WAV, FLAC, OGG), a mono float
    array at the model's rate (or at `sampling_rate=`), or a dict `{"raw" or "array": samples,
    "sampling_rate": rate}` as transformers accepts.

    Attributes:
      chunk_length_s: audio longer than this many seconds is transcribed in chunks of this
        length (0: never chunk).
      stride_length_s: the overlap on each side of a chunk, seconds (a number or (left,
        right)); default chunk_length_s / 6, as transformers.
    """

    model: Any
    feature_extractor: Wav2Vec2FeatureExtractor
    tokenizer: Wav2Vec2CTCTokenizer
    chunk_length_s: float = 30.0
    stride_length_s: float | tuple[float, float] | None = None

    @classmethod
    def from_model(
        cls, model: Any, directory: str | os.PathLike
    ) -> AutomaticSpeechRecognitionPipeline:
        """A loaded model with the preprocessor_config.json and vocab.json of its checkpoint
        `directory`."""
        if not isinstance(model, Wav2Vec2ForCTC):
            raise ValueError(f"{directory} holds a {type(model).__name__}, not a Wav2Vec2ForCTC")
        return cls(
            model,
            Wav2Vec2FeatureExtractor.from_pretrained(directory),
            Wav2Vec2CTCTokenizer.from_pretrained(directory),
        )

    @property
    def samples_per_frame(self) -> int:
        return self.model.config.inputs_to_logits_ratio

    @property
    def sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate

    def __call__(
        self,
        inputs: Audio | Sequence[Audio],
        *,
        sampling_rate: int | None = None,
        chunk_length_s: float | None = None,
        stride_length_s: float | tuple[float, float] | None = None,
        return_timestamps: str | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Transcribes one input or a list of them.

        Args:
          sampling_rate: the rate of array inputs (default: the model's).
          chunk_length_s, stride_length_s: override the pipeline's for this call.
          return_timestamps: "char" or "word" adds "chunks": `[{"text", "timestamp": (start_s,
            end_s)}]`, as transformers' pipeline returns them.

        Returns `{"text"}`, plus "chunks" with timestamps, plus "conversions" (what was done to
        the audio: resampling, mixing down) when anything was.
        """
        if return_timestamps not in (None, "char", "word"):
            raise ValueError(
                f"return_timestamps must be None, 'char' or 'word', got {return_timestamps!r}"
            )
        single = not isinstance(inputs, (list, tuple))
        check_chunking(
            self.chunk_length_s if chunk_length_s is None else chunk_length_s,
            self.stride_length_s if stride_length_s is None else stride_length_s,
        )
        results = []
        for item in [inputs] if single else inputs:
            audio, notes = self._audio(item, sampling_rate)
            for note in notes:
                warnings.warn(note, stacklevel=2)
            ids = self._frame_ids(
                audio,
                self.chunk_length_s if chunk_length_s is None else chunk_length_s,
                self.stride_length_s if stride_length_s is None else stride_length_s,
            )
            result = self._decode(ids, return_timestamps)
            if notes:
                result["conversions"] = notes
            results.append(result)
        return results[0] if single else results

    def _audio(self, item: Audio, sampling_rate: int | None) -> tuple[np.ndarray, list[str]]:
        """A mono waveform at the model's rate and the notes on what was converted."""
        if isinstance(item, (str, os.PathLike)):
            audio, info = load_audio(item, self.sampling_rate)
            _check_finite(audio, str(item))
            return audio, info.notes()
        if isinstance(item, dict):
            keys = {"raw", "array"} & set(item)
            if len(keys) != 1 or "sampling_rate" not in item:
                raise ValueError(
                    "a dict input needs 'raw' (or 'array') and 'sampling_rate', got keys "
                    f"{sorted(item)}"
                )
            array, rate = np.asarray(item[keys.pop()]), item["sampling_rate"]
        elif isinstance(item, (np.ndarray, list)) or hasattr(item, "__array__"):
            array = np.asarray(item)
            rate = self.sampling_rate if sampling_rate is None else sampling_rate
        else:
            raise ValueError(
                f"audio must be a file path, a float array [samples] or a dict with 'raw' and "
                f"'sampling_rate', got {type(item).__name__}"
            )
        whole = isinstance(rate, (int, float, np.number)) and float(rate).is_integer()
        if isinstance(rate, bool) or not whole or rate <= 0:
            raise ValueError(f"sampling_rate must be a positive whole number of Hz, got {rate!r}")
        rate = int(rate)
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"audio samples must be numbers, got an array of {array.dtype}")
        if array.ndim != 1:
            raise ValueError(
                f"array input of shape {array.shape}: expected mono [samples] (mix channels "
                "down, or give a file path, which is mixed down for you)"
            )
        _check_finite(array, "array input")
        resampled_to = self.sampling_rate if rate != self.sampling_rate else None
        info = AudioInfo("array", rate, 1, len(array) / rate, resampled_to, mixed_down=False)
        return resample(array, rate, self.sampling_rate), info.notes()

    def _forward(self, audio: np.ndarray) -> np.ndarray:
        """Per-frame argmax ids `[frames]` of one stretch of audio."""
        # One unpadded utterance: no attention mask (all ones would change nothing).
        features = self.feature_extractor(audio, return_attention_mask=False)
        return np.asarray(_logits(self.model, features["input_values"])[0]).argmax(-1)

    def _frame_ids(self, audio: np.ndarray, chunk_length_s: float, stride_length_s) -> np.ndarray:
        if not chunk_length_s or len(audio) <= chunk_length_s * self.sampling_rate:
            return self._forward(audio)
        return np.concatenate(list(self._chunked(audio, chunk_length_s, stride_length_s)))

    def _chunked(
        self, audio: np.ndarray, chunk_length_s: float, stride_length_s
    ) -> Iterator[np.ndarray]:
        if stride_length_s is None:
            stride_length_s = chunk_length_s / 6
        if isinstance(stride_length_s, (int, float)):
            stride_length_s = (stride_length_s, stride_length_s)
        # Lengths in whole frames, so that chunk boundaries fall on frame boundaries.
        align = self.samples_per_frame
        to_samples = lambda s: int(round(s * self.sampling_rate / align) * align)  # noqa: E731
        spans = chunk_spans(
            len(audio), to_samples(chunk_length_s), *(to_samples(s) for s in stride_length_s)
        )
        for chunk in spans:
            first, last = stride_frames(chunk, align)
            yield self._forward(audio[chunk.start : chunk.end])[first:last]

    def _decode(self, ids: np.ndarray, return_timestamps: str | None) -> dict[str, Any]:
        if not return_timestamps:
            return {"text": self.tokenizer.decode(ids)}
        decoded = self.tokenizer.decode(
            ids, output_char_offsets=True, output_word_offsets=return_timestamps == "word"
        )
        offsets = decoded.char_offsets if return_timestamps == "char" else decoded.word_offsets
        seconds_per_frame = self.samples_per_frame / self.sampling_rate
        return {"text": decoded.text, "chunks": offsets_in_seconds(offsets, seconds_per_frame)}

    # `polyformer transcribe`: its help and the arguments after the checkpoint.
    COMMAND_HELP = "speech to text with a Wav2Vec2ForCTC checkpoint"
    CHECKPOINT_HELP = "a Wav2Vec2ForCTC directory (with preprocessor_config.json, vocab.json)"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "audio", nargs="+", help="sound files (WAV, FLAC, OGG); resampled and mixed down"
        )
        parser.add_argument(
            "--chunk-length-s",
            type=float,
            default=30.0,
            help="longer audio is transcribed in overlapping chunks of this many seconds (0: "
            "never)",
        )
        parser.add_argument(
            "--stride-length-s", type=float, help="overlap per side of a chunk (default: chunk / 6)"
        )
        parser.add_argument(
            "--timestamps", choices=("char", "word"), help="the time span of each char or word"
        )
        parser.add_argument("--json", action="store_true", help="one JSON object per file")

    def run_command(self, args: argparse.Namespace) -> None:
        """Prints each file's transcript (and its conversions, to stderr)."""
        options = {"chunk_length_s": args.chunk_length_s, "return_timestamps": args.timestamps}
        if args.stride_length_s is not None:
            options["stride_length_s"] = args.stride_length_s
        check_chunking(args.chunk_length_s, args.stride_length_s)
        failed = []
        for audio in args.audio:
            try:
                with warnings.catch_warnings():
                    # The conversions are printed below, once, with the file they concern.
                    warnings.simplefilter("ignore")
                    result = self(audio, **options)
            except (ValueError, FileNotFoundError) as error:
                # The other files' transcripts still count: report this one and go on.
                print(f"polyformer transcribe: {audio}: {error}", file=sys.stderr)
                failed.append(audio)
                continue
            for note in result.get("conversions", []):
                print(f"note: {note}", file=sys.stderr)
            if args.json:
                print(json.dumps({"audio": audio, **result}))
                continue
            print(f"{audio}: {result['text']}")
            for chunk in result.get("chunks", []):
                start, end = chunk["timestamp"]
                print(f"  {start:7.2f} {end:7.2f}  {chunk['text']}")
        if failed:
            raise ValueError(
                f"{len(failed)} of {len(args.audio)} files not transcribed: {', '.join(failed)}"
            )
