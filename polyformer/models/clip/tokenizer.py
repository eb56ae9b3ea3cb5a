"""CLIP's lower-cased byte-level BPE, on the `tokenizers` library (as transformers' fast one)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

from polyformer.checkpoint_io import read_json
from polyformer.models.inputs import bpe_from_files, pad_rows, tokenizer_from_file

START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77
# CLIP's words: contractions, runs of letters, single digits, runs of other non-space characters.
# The special tokens come first so that a pre-tokenizer without the added-token table (a
# tokenizer.json read by another program) still keeps them whole, as transformers writes it.
_WORDS = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)

# Words end in "</w>" inside tokens; a byte the vocabulary lacks becomes <|endoftext|>.
_BPE_OPTIONS = dict(
    continuing_subword_prefix="",
    end_of_word_suffix=END_OF_WORD,
    fuse_unk=False,
    unk_token=END_OF_TEXT,
)


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_WORDS), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


def _set_up(bpe: models.BPE) -> tokenizers.Tokenizer:
    """CLIP's pipeline around a BPE model, as transformers' CLIPTokenizer builds it: NFC, runs of
    whitespace -> one space, lower case; split into words, then bytes; <|startoftext|> text
    <|endoftext|>."""
    tokenizer = tokenizers.Tokenizer(bpe)
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([START_OF_TEXT, END_OF_TEXT])
    tokenizer.post_processor = processors.RobertaProcessing(
        (END_OF_TEXT, tokenizer.token_to_id(END_OF_TEXT)),
        (START_OF_TEXT, tokenizer.token_to_id(START_OF_TEXT)),
        trim_offsets=False,
        add_prefix_space=False,
    )
    return tokenizer


class CLIPTokenizer:
    """Text <-> CLIP token ids; the same ids as transformers' CLIPTokenizer (the fast one).

    Build it with `from_pretrained(directory)` (tokenizer.json, else vocab.json + merges.txt),
    `from_files(vocab_file, merges_file)` or `train(texts, vocab_size)`. Every text becomes
    `<|startoftext|> ... <|endoftext|>`; batches are right-padded with `pad_token`.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        model_max_length: int = MODEL_MAX_LENGTH,
        pad_token: str = END_OF_TEXT,
    ):
        ids = {
            name: tokenizer.token_to_id(name) for name in (START_OF_TEXT, END_OF_TEXT, pad_token)
        }
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"the vocabulary lacks CLIP's special tokens {missing}")
        if model_max_length < 2:
            raise ValueError(
                f"model_max_length must be at least 2 (<|startoftext|> and <|endoftext|>), "
                f"got {model_max_length}"
            )
        self.tokenizer = tokenizer
        self.model_max_length = model_max_length
        self.pad_token = pad_token
        self.bos_token_id = ids[START_OF_TEXT]
        self.eos_token_id = ids[END_OF_TEXT]
        self.pad_token_id = ids[pad_token]

    @classmethod
    def from_files(
        cls,
        vocab_file: str | os.PathLike,
        merges_file: str | os.PathLike,
        *,
        model_max_length: int = MODEL_MAX_LENGTH,
        pad_token: str = END_OF_TEXT,
    ) -> CLIPTokenizer:
        """From CLIP's vocab.json and merges.txt (words end in `</w>`; unknown -> <|endoftext|>)."""
        bpe = bpe_from_files(vocab_file, merges_file, **_BPE_OPTIONS)
        return cls(_set_up(bpe), model_max_length=model_max_length, pad_token=pad_token)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> CLIPTokenizer:
        """From a checkpoint directory: tokenizer.json, else vocab.json + merges.txt; the maximum
        length and pad token from tokenizer_config.json / special_tokens_map.json when present."""
        directory = Path(directory)
        settings = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (directory / name).is_file():
                settings.update(read_json(directory, name))
        pad = settings.get("pad_token", END_OF_TEXT)
        kwargs = {
            "model_max_length": int(settings.get("model_max_length", MODEL_MAX_LENGTH)),
            # transformers writes a token either as its text or as {"content": text, ...}.
            "pad_token": pad["content"] if isinstance(pad, dict) else pad,
        }
        if kwargs["model_max_length"] > 10**9:  # transformers' "no limit" placeholder
            kwargs["model_max_length"] = MODEL_MAX_LENGTH
        if (directory / "tokenizer.json").is_file():
            return cls(tokenizer_from_file(directory / "tokenizer.json"), **kwargs)
        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        if vocab.is_file() and merges.is_file():
            return cls.from_files(vocab, merges, **kwargs)
        raise FileNotFoundError(
            f"no tokenizer in {directory}: looked for tokenizer.json, or vocab.json and merges.txt"
        )

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> CLIPTokenizer:
        """A CLIP-format BPE learned from `texts`, its vocabulary laid out as OpenAI's: the 256
        byte symbols, the same followed by `</w>`, one token per merge, then <|startoftext|> and
        <|endoftext|>; `vocab_size` counts them all (at least 514)."""
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # OpenAI's byte order
        if vocab_size < 2 * len(alphabet) + 2:
            raise ValueError(
                f"vocab_size must be at least {2 * len(alphabet) + 2}, got {vocab_size}"
            )
        learner = tokenizers.Tokenizer(models.BPE(end_of_word_suffix=END_OF_WORD))
        learner.normalizer = _normalizer()
        learner.pre_tokenizer = _pre_tokenizer()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            end_of_word_suffix=END_OF_WORD,
            initial_alphabet=alphabet,
            show_progress=False,
        )
        learner.train_from_iterator(texts, trainer)
        merges = [tuple(pair) for pair in json.loads(learner.to_str())["model"]["merges"]]
        merges = merges[: vocab_size - 2 * len(alphabet) - 2]
        symbols = [*alphabet, *(s + END_OF_WORD for s in alphabet), *("".join(m) for m in merges)]
        # Two merges can spell the same token; it keeps the first id, as OpenAI's dict does.
        vocab = {s: i for i, s in enumerate(dict.fromkeys([*symbols, START_OF_TEXT, END_OF_TEXT]))}
        bpe = models.BPE(vocab=vocab, merges=merges, **_BPE_OPTIONS)
        return cls(_set_up(bpe))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes tokenizer.json, vocab.json + merges.txt and tokenizer_config.json (class,
        special tokens, model_max_length), which transformers' AutoTokenizer reads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / "tokenizer.json"))
        self.tokenizer.model.save(str(directory))
        config = {
            "tokenizer_class": "CLIPTokenizer",
            "bos_token": START_OF_TEXT,
            "eos_token": END_OF_TEXT,
            "unk_token": END_OF_TEXT,
            "pad_token": self.pad_token,
            "model_max_length": self.model_max_length,
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    def __len__(self) -> int:
        """The number of ids, added tokens included: the model's vocab_size must cover them."""
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """`[<|startoftext|>, ..., <|endoftext|>]` for one text, whatever its length."""
        body = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [self.bos_token_id, *body, self.eos_token_id]

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        text = self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        # Word ends are "</w>" inside tokens; transformers turns them into spaces the same way.
        return text.replace(END_OF_WORD, " ").strip()

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        padding: bool | str = True,
        truncation: bool = False,
        max_length: int | None = None,
    ) -> dict[str, np.ndarray]:
        """A batch for CLIP's text tower: input_ids and attention_mask `[batch, length]` int32.

        Args:
          texts: one text or several.
          padding: True or "longest" pads to the longest text, "max_length" to `max_length`,
            False leaves them unpadded (then all texts must have the same length).
          truncation: cut texts longer than `max_length` to it, keeping <|endoftext|> last.
            Without it a longer text is an error.
          max_length: default `model_max_length` (77 for CLIP: its position embeddings).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("give at least one text")
        limit = self.model_max_length if max_length is None else max_length
        if limit < 2:
            raise ValueError(f"max_length must be at least 2, got {limit}")
        rows = []
        for i, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > limit:
                if not truncation:
                    raise ValueError(
                        f"text {i} is {len(ids)} tokens long, more than max_length {limit}; "
                        "shorten it or pass truncation=True"
                    )
                ids = [*ids[: limit - 1], self.eos_token_id]
            rows.append(ids)
        if padding is True or padding == "longest":
            length = max(map(len, rows))
        elif padding == "max_length":
            length = limit
        elif padding is False:
            length = len(rows[0])
            if any(len(row) != length for row in rows):
                raise ValueError("texts of different lengths need padding=True or 'max_length'")
        else:
            raise ValueError(
                f"padding must be True, False, 'longest' or 'max_length', got {padding!r}"
            )
        input_ids, attention_mask = pad_rows(rows, length, self.pad_token_id, np.int32)
        return {"input_ids": input_ids, "attention_mask": attention_mask}
