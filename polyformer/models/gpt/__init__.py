"""GPT-2: `GPT2LMHeadModel`, its config, conversion table, tokenizer, `generate` and
`generate_stream`; `FAMILY` is its record in `polyformer.models.FAMILIES`."""

from polyformer.models.gpt import convert
from polyformer.models.gpt.config import GPT2Config
from polyformer.models.gpt.family import FAMILY
from polyformer.models.gpt.generate import generate, generate_stream
from polyformer.models.gpt.model import GPT2MLP, CausalLMOutput, GPT2Block, GPT2LMHeadModel
from polyformer.models.gpt.tokenizer import GPT2Tokenizer

__all__ = [
    "FAMILY",
    "CausalLMOutput",
    "GPT2Block",
    "GPT2Config",
    "GPT2LMHeadModel",
    "GPT2MLP",
    "GPT2Tokenizer",
    "convert",
    "generate",
    "generate_stream",
]
