"""The `polyformer` command: `train`, and one command per model family (`FAMILIES`), which
runs the family's pipeline on a checkpoint."""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
from collections.abc import Sequence

from polyformer.models import FAMILIES
from polyformer.pipelines import pipeline


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
    result = job.run(profile_steps=args.profile_steps)
    exported = trainer.export(job, result.out_dir / "model")
    kept = [s for s in args.set if not s.replace(" ", "").startswith("steps=")]
    # As the user can type it: `make demo` runs the command from .venv/bin, not from PATH.
    command = "polyformer" if shutil.which("polyformer") else sys.argv[0]
    eval_text = "n/a" if result.eval_loss is None else f"{result.eval_loss:.3f}"
    adapter = (
        ""
        if run.lora is None
        else f"adapter:      {exported / trainer.ADAPTER_DIR} (the LoRA adapter, merged into the "
        "model above, in PEFT's format: lora.load_adapter and peft.PeftModel.from_pretrained "
        "read it)\n"
    )
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
{adapter}try it:       {command} {FAMILIES[run.model.model_type].try_command.format(model=exported)}
continue:     {command} train {args.config} """
        + " ".join(f"--set {s}" for s in [*kept, f"steps={2 * result.final_step}"])
    )


def _step_range(text: str) -> tuple[int, int]:
    from polyformer.training import trainer

    try:
        return trainer.parse_step_range(text)
    except trainer.BadStepRange as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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


def _run_pipeline(task: str, args: argparse.Namespace) -> None:
    pipeline(task, args.checkpoint).run_command(args)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="polyformer", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

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
    train.add_argument(
        "--profile-steps",
        type=_step_range,
        metavar="FIRST:LAST",
        help="write a jax.profiler trace of these steps (1-based, inclusive) to OUT_DIR/profile; "
        "open it with tensorboard --logdir OUT_DIR/profile",
    )
    train.set_defaults(run=_train)

    for family in FAMILIES.values():
        # A family's command runs its first pipeline; the pipeline class says what it takes.
        task, pipe = next(iter(family.pipelines.items()))
        command = commands.add_parser(family.command, help=pipe.COMMAND_HELP)
        command.add_argument("checkpoint", help=pipe.CHECKPOINT_HELP)
        pipe.add_arguments(command)
        command.set_defaults(run=functools.partial(_run_pipeline, task))

    from polyformer.training import compile as compile_command

    compile_command.add_parser(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        status = args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"polyformer {args.command}: {error}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
