"""Train and evaluate one tagger on real data; prints per-epoch dev scores and a final JSON
line with dev/test scores, seed and wall time (what EXPERIMENTS.md quotes).

    python bench/tagging.py --data ../shared/data/ud_english_ewt --preset tagger-ewt \
        --cell lstm --bidirectional false [--out runs/ewt-lstm] [--json-out results.json]

Every ``TaggerConfig`` field is an option (``--data`` the folder, ``--threads`` torch's
threads, default 1 here: fastest on a busy machine).  ``--out`` keeps the run folder
(checkpoint, metrics.jsonl; `carousel plot RUN` draws its curves); without it the run
trains in a temporary one.
"""

from __future__ import annotations

import argparse
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
from carousel.tagging import TaggerConfig, train_tagger


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tagger-ewt")
    parser.add_argument("--out", default=None, help="run folder to keep (default: temporary)")
    parser.add_argument("--json-out", default=None, help="append the result line to this file")
    add_config_arguments(parser, TaggerConfig)
    args = parser.parse_args(argv)
    cfg = resolve_config(TaggerConfig, args.preset, {"threads": 1, **overrides_from_args(args)})
    if cfg.data is None:
        parser.error("--data FOLDER is required (CoNLL-U or CoNLL-2000 files)")
    print(f"config: {config_to_dict(cfg)}", flush=True)
    start = time.perf_counter()
    _, _, metrics = train_tagger(cfg, out=args.out)
    result = {
        "data": cfg.data,
        "config": config_to_dict(cfg),
        "best_epoch": metrics["best_epoch"],
        "dev": metrics["dev"],
        "test": metrics.get("test"),
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
