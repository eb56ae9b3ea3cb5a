"""GPT-2: `GPT2LMHeadModel`, its config, conversion table, tokenizer and `generate`."""

from polyformer.models.gpt import convert
from polyformer.models.gpt.config import GPT2Config
from polyformer.models.gpt.generate import generate
from polyformer.models.gpt.model import GPT2MLP, CausalLMOutput, GPT2Block, GPT2LMHeadModel
from polyformer.models.gpt.tokenizer import GPT2Tokenizer

__all__ = [
    "CausalLMOutput",
    "GPT2Block",
    "GPT2Config",
    "GPT2LMHeadModel",
    "GPT2MLP",
    "GPT2Tokenizer",
    "convert",
    "generate",
]
