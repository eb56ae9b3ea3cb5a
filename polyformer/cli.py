"""The `polyformer` command."""

from __future__ import annotations

import argparse
import shutil
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


def _train(args: argparse.Namespace) -> None:
    from polyformer.training import config, trainer

    if args.distributed:
        import jax

        # Without arguments JAX finds the coordinator, process count and index itself on TPU
        # pods, SLURM, Open MPI and Kubernetes clusters.
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    run = config.apply_overrides(config.load(args.config), args.set)
    job = trainer.Trainer(run, run.data.load())
    resumed = job.checkpointer.latest_step()
    if resumed:
        print(f"resuming from the checkpoint of step {resumed} in {job.checkpointer.directory}")
    result = job.run()
    exported = trainer.export(job, result.out_dir / "model")
    kept = [s for s in args.set if not s.replace(" ", "").startswith("steps=")]
    # As the user can type it: `make demo` runs the command from .venv/bin, not from PATH.
    command = "polyformer" if shutil.which("polyformer") else sys.argv[0]
    eval_text = "n/a" if result.eval_loss is None else f"{result.eval_loss:.3f}"
    print(f"\nstep {result.final_step}: train loss {result.train_loss:.3f}, eval loss {eval_text}")
    if run.model.model_type == "gpt2" and (exported / "tokenizer.json").is_file():
        print(f"\n--- sample from the trained model ---\n{_sample(job, exported, args)}")
        print("--- end of sample ---")
    print(
        f"""
metrics:      {result.metrics_path} (and TensorBoard files in {result.out_dir / "tensorboard"})
loss plot:    {result.plot_path}
checkpoints:  {job.checkpointer.directory}
model:        {exported} (a Hugging Face checkpoint; pf.from_pretrained and transformers read it)
continue:     {command} train {args.config} """
        + " ".join(f"--set {s}" for s in [*kept, f"steps={2 * result.final_step}"])
    )


def _sample(job, exported, args: argparse.Namespace) -> str:
    """The prompt and a sampled continuation from a trained GPT."""
    from polyformer.models import gpt

    tokenizer = gpt.GPT2Tokenizer.from_pretrained(exported)
    batch = tokenizer([args.prompt])
    tokens = gpt.generate(
        job.model(),
        batch["input_ids"],
        batch["attention_mask"],
        max_new_tokens=args.sample_tokens,
        do_sample=True,
        top_k=40,
        rng=job.config.seed,
    )
    prompt_length = batch["input_ids"].shape[1]
    return args.prompt + tokenizer.decode(tokens[0, prompt_length:], skip_special_tokens=True)


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

    train = commands.add_parser("train", help="train a model from a run config file")
    train.add_argument(
        "config", help="an experiment file, e.g. experiments/configs/gpt_stdlib_demo.py"
    )
    train.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set model.n_layer=4 --set attention=favor",
    )
    train.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host run: call jax.distributed.initialize() first (run on every host)",
    )
    train.add_argument("--coordinator", help="with --distributed: host:port of process 0")
    train.add_argument("--num-processes", type=int, help="with --distributed: number of hosts")
    train.add_argument("--process-id", type=int, help="with --distributed: this host's index")
    train.add_argument("--prompt", default="def ", help="prompt for the sample printed at the end")
    train.add_argument("--sample-tokens", type=int, default=80)
    train.set_defaults(run=_train)
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
