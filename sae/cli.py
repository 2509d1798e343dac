"""`python -m sae train|eval|bench|make-tiny-lm|make-corpus`: the SAE without Redis or Celery.
`train` with several `--config` files trains them as one pack (sae.pack).

Exit codes: 0 ok, 1 the work failed, 2 bad input (config, paths, arguments).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sae.config import load_run_config
from sae.errors import ConfigError, DataError, SAEError


def _print(result: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(title)
    for key, value in result.items():
        if not isinstance(value, dict | list):
            print(f"  {key:28} {value:.4g}" if isinstance(value, float) else f"  {key:28} {value}")


def cmd_train(args: argparse.Namespace) -> int:
    from sae.checkpoint import list_checkpoints
    from sae.run import TrainingRun

    configs = [load_run_config(path) for path in args.config]
    out = Path(args.out)
    names = [Path(path).stem for path in args.config]
    if len(set(names)) < len(names):
        print("--config files must have distinct names (member i trains in --out/<name>)",
              file=sys.stderr)  # fmt: skip
        return 2
    dirs = [out] if len(configs) == 1 else [out / name for name in names]
    held = [d for d in dirs if list_checkpoints(d / "checkpoints")]
    if held and not args.resume:
        print(f"{held[0]} already holds checkpoints: pass --resume to continue", file=sys.stderr)
        return 2
    if len(configs) > 1:
        return _train_pack(configs, dirs, args)
    run = TrainingRun(configs[0], out, device=args.device)
    progress = None if args.json else _progress_line
    result = run.train(max_seconds=args.max_seconds, on_progress=progress)
    if not args.json:
        print()
    _print(result.model_dump(), args.json, f"checkpoint {result.checkpoint}")
    if result.done and not args.json:
        _print(result.metrics["evals"], False, f"final SAE in {out / 'final'}")
    return 0


def _train_pack(configs: list[Any], dirs: list[Path], args: argparse.Namespace) -> int:
    """Several configs: one pack (one LM forward per batch), member i in dirs[i]."""
    from sae.pack import PackRun

    result = PackRun(configs, dirs, device=args.device).train(max_seconds=args.max_seconds)
    if args.json:
        print(json.dumps(result.model_dump(), indent=2))
    for run_dir, member in zip(dirs, result.members, strict=True):
        if not args.json:
            state = member.error or ("done" if member.done else "checkpointed")
            print(f"{run_dir}: step {member.step}, {member.tokens:,} tokens, {state}")
    return 1 if any(member.error for member in result.members) else 0


def _progress_line(p: dict[str, Any]) -> None:
    if p["loss"] is None:
        return
    print(
        f"\rstep {p['step']:>7}  tokens {p['tokens']:>11,}/{p['total_tokens']:,}  "
        f"loss {p['loss']:.4f}  L0 {p['l0']:.1f}  {p['tokens_per_s']:,.0f} tok/s",
        end="",
        flush=True,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from sae.activations import take_holdout
    from sae.artifacts import load_sae, update_metrics
    from sae.evals import evaluate_sae
    from sae.lm import load_lm

    config = load_run_config(args.config)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lm = load_lm(
        config.model, device=device, lm_dtype=config.train.lm_dtype, token_env=config.hf_token_env
    )
    lm.check_layer(config.layer)
    sae = load_sae(Path(args.sae)).to(device)
    held = take_holdout(config, lm)
    evals = evaluate_sae(
        sae, lm, config.layer, held.ids, held.labels, config.evals, config.train.lm_batch_size
    )
    update_metrics(Path(args.sae), evals=evals)
    _print(evals, args.json, f"evals of {args.sae} (written to its metrics.json)")
    if not args.json:
        for name, scores in evals["pii_probe"]["types"].items():
            if "probe" in scores:
                print(
                    f"  PII {name:10} latent F1 {scores['latent']['f1']:.3f}  "
                    f"probe F1 {scores['probe']['f1']:.3f}"
                )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    # The reference libraries print notices to stdout; --json output must stay parseable.
    with contextlib.redirect_stdout(sys.stderr):
        if args.suite == "pack":
            from sae.pack_bench import print_pack_table as print_table
            from sae.pack_bench import run_pack_benchmark

            results = run_pack_benchmark(args.quick, args.steps, args.device)
        else:
            from sae.bench import print_table, run_benchmark

            results = run_benchmark(steps=args.steps, quick=args.quick)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


def cmd_make_tiny_lm(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from sae.tiny_lm import make_tiny_lm

    hf_logging.disable_progress_bar()
    print(make_tiny_lm(args.dir, seed=args.seed))
    return 0


def cmd_make_corpus(args: argparse.Namespace) -> int:
    from sae.corpus import write_corpus

    print(write_corpus(args.file, args.n, args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sae", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="train an SAE, or a pack of them (resumable)")
    train.add_argument(
        "--config",
        required=True,
        action="append",
        help="RunConfig YAML; repeat it to train a pack from one activation stream",
    )
    train.add_argument(
        "--out", required=True, help="run directory (a pack: member NAME in --out/NAME)"
    )
    train.add_argument(
        "--resume", action="store_true", help="continue from the newest valid checkpoint"
    )
    train.add_argument(
        "--max-seconds", type=float, default=None, help="stop (and checkpoint) after this"
    )
    train.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)"
    )
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(func=cmd_train)

    evaluate = verbs.add_parser("eval", help="evaluate a trained SAE")
    evaluate.add_argument("--sae", required=True, help="directory with sae.safetensors + cfg.json")
    evaluate.add_argument("--config", required=True, help="RunConfig YAML (model, layer, data)")
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_eval)

    bench = verbs.add_parser(
        "bench", help="training-step throughput vs references (steps), or packing (pack)"
    )
    bench.add_argument("suite", nargs="?", choices=("steps", "pack"), default="steps")
    bench.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    bench.add_argument("--device", default=None, help="pack: cpu, cuda ... (default: cuda if any)")
    bench.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    bench.add_argument("--out", default=None, help="also write the JSON here")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=cmd_bench)

    tiny = verbs.add_parser("make-tiny-lm", help="create a tiny local causal LM + tokenizer")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_make_tiny_lm)

    corpus = verbs.add_parser("make-corpus", help="write a synthetic chat corpus with PII")
    corpus.add_argument("file")
    corpus.add_argument("--n", type=int, default=2000)
    corpus.add_argument("--seed", type=int, default=0)
    corpus.set_defaults(func=cmd_make_corpus)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ValidationError as exc:
        print(f"bad config {getattr(args, 'config', '')}:\n{exc}", file=sys.stderr)
        return 2
    except (ConfigError, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
