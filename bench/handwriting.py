"""Train and evaluate a UNIPEN handwriting model (isolated digits, or digit strings with
CTC) on the writer-independent split, through the shared loop into a run folder (--out;
default a temporary one): prints per-epoch validation scores and a final JSON line with
validation/test scores, seed and wall time (what EXPERIMENTS.md quotes).  For strings it
also draws a test string's strokes and per-frame label probabilities (--png).

Every test score is also given without IBM's box-rescaled samples ("test_clean":
:func:`carousel.data.unipen.box_rescaled`; strings then composed from the other test
digits), whose segments often hold one stroke of a several-stroke digit.  For digits it
prints the confusion matrix of each test organisation.

    python bench/handwriting.py --archive ../shared/data/unipen_1a/unipen_1a.tar.gz \
        --task digits --preset unipen-digits
    python bench/handwriting.py --archive ... --task strings --preset unipen-strings \
        --png docs/figures/unipen_ctc.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time

from carousel.config import (
    add_config_arguments,
    config_to_dict,
    overrides_from_args,
    resolve_config,
)
from carousel.data.unipen import box_rescaled, read_unipen, split_by_organisation
from carousel.handwriting import (
    HandwritingConfig,
    compose_strings,
    draw_probabilities,
    evaluate_digits,
    evaluate_strings,
    train_handwriting,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", required=True, help="path of unipen_1a.tar.gz")
    parser.add_argument("--task", choices=["digits", "strings"], default="digits")
    parser.add_argument("--preset", default=None, help="default: unipen-<task>")
    parser.add_argument("--png", default=None, help="strings: write the probability figure")
    parser.add_argument("--json-out", default=None, help="append the result line to this file")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    add_config_arguments(parser, HandwritingConfig)
    args = parser.parse_args(argv)
    cfg = resolve_config(
        HandwritingConfig, args.preset or f"unipen-{args.task}", overrides_from_args(args)
    )
    cfg = dataclasses.replace(cfg, threads=cfg.threads or 1)  # one torch thread unless told
    print(f"config: {config_to_dict(cfg)}  task {args.task}", flush=True)
    start = time.perf_counter()
    parts = split_by_organisation(read_unipen(args.archive))
    print({k: len(v) for k, v in parts.items()}, f"parsed in {time.perf_counter() - start:.0f} s")
    clean = [s for s in parts["test"] if not box_rescaled(s)]
    f = cfg.featurisation
    model, metrics = train_handwriting(cfg, parts, args.out, task=args.task, data=args.archive)
    if args.task == "digits":
        test_clean = {"accuracy": evaluate_digits(model, clean, f)}
        for org, result in metrics["test"]["by_organisation"].items():
            print(f"test {org}: accuracy {100 * result['accuracy']:.2f} %; confusion (rows truth)")
            print("      " + "".join(f"{d:>5}" for d in "0123456789"))
            for d, row in enumerate(result["confusion"]):
                print(f"    {d} " + "".join(f"{v:>5}" for v in row))
    else:
        strings = compose_strings(clean, cfg.eval_strings, cfg.seed + 2, cfg)
        test_clean = {
            "greedy": evaluate_strings(model, strings, f),
            "beam": evaluate_strings(model, strings, f, cfg.beam_width),
        }
        if args.png:
            strokes, label = compose_strings(parts["test"], 1, cfg.seed + 3, cfg)[0]
            read = draw_probabilities(model, strokes, args.png, label, f)
            print(f"figure {args.png}: truth {label!r}, read {read!r}")
    result = {
        "task": args.task,
        "config": config_to_dict(cfg),
        "best_epoch": metrics["best_epoch"],
        "validation": metrics["validation"],
        "test": {k: v for k, v in metrics.get("test", {}).items() if k != "by_organisation"},
        "test_clean": test_clean,
        "test_clean_digits": len(clean),
        "wall_s": round(time.perf_counter() - start, 1),
        "threads": cfg.threads,
        "machine": platform.processor() or platform.machine(),
    }
    line = json.dumps(result)
    print(line, flush=True)
    if args.json_out:
        with open(args.json_out, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
