"""The `polyformer` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _generate(args: argparse.Namespace) -> None:
    from polyformer.pipelines import pipeline

    pipe = pipeline("text-generation", args.checkpoint)
    sampling = (
        {
            "do_sample": True,
            "temperature": args.temperature,
            "top_k": args.top_k,
            "top_p": args.top_p,
            "rng": args.seed,
        }
        if args.sample
        else {}
    )
    for result in pipe(args.prompts, max_new_tokens=args.max_new_tokens, **sampling):
        print(result[0]["generated_text"])


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="polyformer", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="continue prompts with a GPT-2 checkpoint")
    gen.add_argument("checkpoint", help="a checkpoint directory (config.json, weights, tokenizer)")
    gen.add_argument("prompts", nargs="+", help="one or more prompts")
    gen.add_argument("--max-new-tokens", type=int, default=50)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=50)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(run=_generate)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"polyformer {args.command}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
