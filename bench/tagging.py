"""Train and evaluate one tagger on real data; prints per-epoch dev scores and a final JSON
line with dev/test scores, seed and wall time (what EXPERIMENTS.md quotes).

    python bench/tagging.py --data ../shared/data/ud_english_ewt --preset tagger-ewt \
        --cell lstm --bidirectional false [--json-out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from carousel.config import (
    add_config_arguments,
    config_to_dict,
    overrides_from_args,
    resolve_config,
)
from carousel.tagging import TaggerConfig, train_tagger


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with CoNLL-U or CoNLL-2000 files")
    parser.add_argument("--preset", default="tagger-ewt")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)"
    )
    parser.add_argument("--json-out", default=None, help="append the result line to this file")
    add_config_arguments(parser, TaggerConfig)
    args = parser.parse_args(argv)
    cfg = resolve_config(TaggerConfig, args.preset, overrides_from_args(args))
    torch.set_num_threads(args.threads)
    print(f"config: {config_to_dict(cfg)}  torch threads {torch.get_num_threads()}", flush=True)
    start = time.perf_counter()
    _, _, metrics = train_tagger(cfg, args.data, log=lambda s: print(s, flush=True))
    result = {
        "data": args.data,
        "config": config_to_dict(cfg),
        "best_epoch": metrics["best_epoch"],
        "dev": metrics["dev"],
        "test": metrics.get("test"),
        "wall_s": round(time.perf_counter() - start, 1),
        "threads": args.threads,
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
