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
    from polyformer.models import FAMILIES
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
try it:       {command} {FAMILIES[run.model.model_type].try_command.format(model=exported)}
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


def _table_qa(args: argparse.Namespace) -> None:
    import json

    from polyformer.models.tapas.decoding import Answer
    from polyformer.pipelines import pipeline

    pipe = pipeline("table-question-answering", args.checkpoint)
    answers = pipe(args.table, args.questions, sequential=args.sequential)
    for question, answer in zip(args.questions, answers, strict=True):
        if args.json:
            print(json.dumps({"question": question, **answer}))
        else:
            print(f"{question}\n  {Answer(**answer)}")


def _print_scores(images: Sequence[str], results: list[list[dict]]) -> None:
    for image, scores in zip(images, results, strict=True):
        print(image)
        for result in scores:
            print(f"  {result['score']:.4f}  {result['label']}")


def _classify(args: argparse.Namespace) -> None:
    from polyformer.pipelines import pipeline

    pipe = pipeline("image-classification", args.checkpoint)
    _print_scores(args.images, pipe(args.images, top_k=args.top_k))


def _zero_shot(args: argparse.Namespace) -> None:
    from polyformer.pipelines import pipeline

    labels = [label.strip() for label in args.labels.split(",")]
    if not all(labels):
        raise ValueError(f"--labels is a comma-separated list of labels, got {args.labels!r}")
    template = {} if args.template is None else {"hypothesis_template": args.template}
    pipe = pipeline("zero-shot-image-classification", args.checkpoint)
    _print_scores(args.images, pipe(args.images, candidate_labels=labels, **template))


def _transcribe(args: argparse.Namespace) -> None:
    import json
    import warnings

    from polyformer.pipelines import pipeline

    pipe = pipeline("automatic-speech-recognition", args.checkpoint)
    options = {"chunk_length_s": args.chunk_length_s, "return_timestamps": args.timestamps}
    if args.stride_length_s is not None:
        options["stride_length_s"] = args.stride_length_s
    with warnings.catch_warnings():
        # The conversions are printed below, once, with the file they concern.
        warnings.simplefilter("ignore")
        results = pipe(args.audio, **options)
    for audio, result in zip(args.audio, results, strict=True):
        for note in result.get("conversions", []):
            print(f"note: {note}", file=sys.stderr)
        if args.json:
            print(json.dumps({"audio": audio, **result}))
            continue
        print(f"{audio}: {result['text']}")
        for chunk in result.get("chunks", []):
            start, end = chunk["timestamp"]
            print(f"  {start:7.2f} {end:7.2f}  {chunk['text']}")


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

    table_qa = commands.add_parser(
        "table-qa", help="answer questions about a CSV table with a TAPAS checkpoint"
    )
    table_qa.add_argument("checkpoint", help="a TAPAS checkpoint directory (with vocab.txt)")
    table_qa.add_argument("table", help="a CSV file with a header row; cells are read as text")
    table_qa.add_argument("questions", nargs="+", help="one or more questions")
    table_qa.add_argument(
        "--sequential",
        action="store_true",
        help="conversational (SQA) models: each question sees the previous answer",
    )
    table_qa.add_argument("--json", action="store_true", help="one JSON object per answer")
    table_qa.set_defaults(run=_table_qa)

    classify = commands.add_parser("classify", help="label images with a ViT checkpoint")
    classify.add_argument(
        "checkpoint", help="a ViTForImageClassification directory (with preprocessor_config.json)"
    )
    classify.add_argument("images", nargs="+", help="one or more image files")
    classify.add_argument("--top-k", type=int, default=5, help="labels shown per image")
    classify.set_defaults(run=_classify)

    zero_shot = commands.add_parser(
        "zero-shot", help="score label texts for images with a CLIP checkpoint"
    )
    zero_shot.add_argument(
        "checkpoint", help="a CLIP directory (with preprocessor_config.json and tokenizer files)"
    )
    zero_shot.add_argument("images", nargs="+", help="one or more image files")
    zero_shot.add_argument(
        "--labels", required=True, help='comma-separated, e.g. "a photo of a cat,a photo of a dog"'
    )
    zero_shot.add_argument(
        "--template",
        help="the sentence each label is put into, {} marking where (default: the pipeline's, "
        '"This is a photo of {}.")',
    )
    zero_shot.set_defaults(run=_zero_shot)

    transcribe = commands.add_parser(
        "transcribe", help="speech to text with a Wav2Vec2ForCTC checkpoint"
    )
    transcribe.add_argument(
        "checkpoint", help="a Wav2Vec2ForCTC directory (with preprocessor_config.json, vocab.json)"
    )
    transcribe.add_argument(
        "audio", nargs="+", help="sound files (WAV, FLAC, OGG); resampled and mixed down as needed"
    )
    transcribe.add_argument(
        "--chunk-length-s",
        type=float,
        default=30.0,
        help="longer audio is transcribed in overlapping chunks of this many seconds (0: never)",
    )
    transcribe.add_argument(
        "--stride-length-s", type=float, help="overlap per side of a chunk (default: chunk / 6)"
    )
    transcribe.add_argument(
        "--timestamps", choices=("char", "word"), help="print the time span of each char or word"
    )
    transcribe.add_argument("--json", action="store_true", help="one JSON object per file")
    transcribe.set_defaults(run=_transcribe)
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
