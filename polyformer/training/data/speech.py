"""Data configs for speech recognition: espeak-ng's spoken digit and letter sequences for CTC.

`SpokenDigitsData.load()` builds the embedded TFDS set `spoken_digits` (polyformer.datasets;
built once per configuration, then read from disk), runs every utterance through Wav2Vec2's
feature extractor (normalised over its real samples, padded to one length for the whole set so
that the train step compiles once) and its transcript through the CTC tokenizer. Batches:
"input_values" float32 and "attention_mask" int32 `[batch, samples]`, "labels" int32
`[batch, max_label_length]` with -100 on padding, as the "ctc" objective reads them.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from polyformer.datasets.embedded import named_config
from polyformer.datasets.spoken_digits import SYMBOLS, SpokenDigitsConfig
from polyformer.models.wav2vec2.processing import Wav2Vec2FeatureExtractor
from polyformer.models.wav2vec2.tokenizer import Wav2Vec2CTCTokenizer
from polyformer.training.data.arrays import ArrayData
from polyformer.training.data.sources import data_source

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "|")
LABEL_PADDING = -100
# Samples per Wav2Vec2 frame at the official conv strides; only for the throughput count.
SAMPLES_PER_FRAME = 320


def ctc_vocab(symbols: str) -> dict[str, int]:
    """Wav2Vec2's special tokens (the blank `<pad>` first, as in facebook's vocabularies), the
    word delimiter, then one token per symbol."""
    return {token: i for i, token in enumerate((*SPECIAL_TOKENS, *symbols))}


def pad_labels(sequences: list[list[int]], length: int) -> np.ndarray:
    """Label id lists -> int32 `[len(sequences), length]`, -100 after each sequence."""
    labels = np.full((len(sequences), length), LABEL_PADDING, np.int32)
    for row, ids in enumerate(sequences):
        labels[row, : len(ids)] = ids
    return labels


def add_noise(std: float):
    """Training augmentation: Gaussian noise of `std` (the audio is normalised to unit
    variance) on the real samples of each utterance."""

    def transform(batch: dict[str, np.ndarray], rng: np.random.Generator):
        values = batch["input_values"]
        noise = rng.normal(0.0, std, values.shape).astype(np.float32) * batch["attention_mask"]
        return dict(batch, input_values=values + noise)

    return transform


@dataclasses.dataclass(frozen=True)
class SpokenDigitsData:
    """Spoken sequences of `symbols` for `Wav2Vec2ForCTC` trained from scratch.

    Attributes:
      num_utterances, dataset_seed, validation_percent, min_symbols, max_symbols, symbols: the
        `SpokenDigitsConfig` of the TFDS set (validation holds whole sequences, never heard in
        training in any voice).
      noise_std: Gaussian noise added to training audio (0: none).
      pad_to_multiple_of: the common padded length is rounded up to a multiple of this.
    """

    num_utterances: int = 2000
    dataset_seed: int = 0
    validation_percent: int = 10
    min_symbols: int = 3
    max_symbols: int = 6
    symbols: str = SYMBOLS
    data_dir: str | None = None
    noise_std: float = 0.0
    pad_to_multiple_of: int = SAMPLES_PER_FRAME

    def __post_init__(self):
        if not self.symbols or len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"symbols must be distinct characters, got {self.symbols!r}")
        if set(self.symbols) & set("".join(SPECIAL_TOKENS)) or " " in self.symbols:
            raise ValueError(f"symbols {self.symbols!r} overlap the special tokens or space")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")

    def dataset_config(self) -> SpokenDigitsConfig:
        values = {**vars(self), "seed": self.dataset_seed}
        return named_config(SpokenDigitsConfig, f"n{self.num_utterances}", values)

    def tokenizer(self) -> Wav2Vec2CTCTokenizer:
        return Wav2Vec2CTCTokenizer(ctc_vocab(self.symbols))

    def feature_extractor(self) -> Wav2Vec2FeatureExtractor:
        # An attention mask, so that the padding added to batch utterances changes nothing
        # (for models with feat_extract_norm="layer").
        return Wav2Vec2FeatureExtractor(return_attention_mask=True)

    def save(self, directory: str | os.PathLike) -> None:
        """Writes preprocessor_config.json, vocab.json and tokenizer_config.json."""
        self.feature_extractor().save_pretrained(directory)
        self.tokenizer().save_pretrained(directory)

    def records(self, split: str) -> tuple[list[np.ndarray], list[str]]:
        """The float32 16 kHz waveforms and transcripts of `split`."""
        source = data_source("spoken_digits", split, self.data_dir, config=self.dataset_config())
        rows = [source[i] for i in range(len(source))]
        audio = [row["audio"].astype(np.float32) / 32768.0 for row in rows]
        return audio, [row["text"].decode() for row in rows]

    def load(self) -> ArrayData:
        splits = {split: self.records(split) for split in ("train", "validation")}
        tokenizer, extractor = self.tokenizer(), self.feature_extractor()
        samples = max(len(a) for audio, _ in splits.values() for a in audio)
        samples = -(-samples // self.pad_to_multiple_of) * self.pad_to_multiple_of
        labels = {s: [tokenizer.encode(t) for t in texts] for s, (_, texts) in splits.items()}
        label_length = max(len(ids) for ids_list in labels.values() for ids in ids_list)

        def arrays(split: str) -> dict[str, np.ndarray]:
            audio, _ = splits[split]
            features = extractor(audio, padding="max_length", max_length=samples)
            return {
                "input_values": features["input_values"],
                "attention_mask": features["attention_mask"],
                "labels": pad_labels(labels[split], label_length),
            }

        vocab = tokenizer.vocab
        return ArrayData(
            arrays("train"),
            arrays("validation"),
            tokens_per_example=samples // SAMPLES_PER_FRAME,
            model_overrides={
                "vocab_size": len(vocab),
                "pad_token_id": vocab["<pad>"],
                "bos_token_id": vocab["<s>"],
                "eos_token_id": vocab["</s>"],
            },
            saver=self.save,
            transform=add_noise(self.noise_std) if self.noise_std else None,
        )
