#!/usr/bin/env python
"""The paper's protocol on the real model, from run folders into a docs page (``make real-protocol``).

    python scripts/real_protocol.py [--out outputs/real-protocol] [--edits 20] [--batch 10]

Every method under spread and blue on CounterFact and zsRE (the bundled records from the
first, the same records for every run), sequential batches, with the model's tuned
hyper-parameters (conf/hparams/model/<model>.yaml). Each run is one ``blue edit`` folder
under ``--out`` (a folder that finished with the same config is not rerun, so an
interrupted protocol resumes; scripts/run_folders.py). The runs' records are stored in
benchmarks/results/protocol-<model>.json and rendered into docs/real-model-results.md
(``blue_cli/reporting/real_results.py``: each strategy's rates with intervals, BLUE's paired
effect per rate).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from run_folders import run_folder

from blue_cli.cache import write_text_atomic
from blue_cli.reporting.readme_results import rewrite_block
from blue_cli.reporting.real_results import PROTOCOL_BEGIN, PROTOCOL_END, pair_rows, render_protocol, run_record

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("memit", "memit_seq", "alphaedit", "pmet", "rect", "prune")
DATASETS = ("counterfact", "zsre")
STRATEGIES = ("spread", "blue")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "real-protocol")
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "real-model-results.md")
    args = parser.parse_args()
    common = [
        f"model={args.model}",
        f"num_edits={args.edits}",
        f"batch_size={args.batch}",
        "eval.generation=false",
        "eval.wild=false",
        "device=cpu",
    ]
    records = []
    for dataset in args.datasets.split(","):
        for method in args.methods.split(","):
            for strategy in STRATEGIES:
                folder = args.out / dataset / f"{method}-{strategy}"
                overrides = [*common, f"dataset={dataset}", f"method={method}", f"strategy={strategy}"]
                records.append(run_record(run_folder(folder, overrides, "protocol run")))
    store = ROOT / "benchmarks" / "results" / f"protocol-{args.model}.json"
    payload = {
        "store": store.name,
        "description": f"{args.model}, CPU, generation and the evaluation in the wild off, runs: " + " ".join(common),
        "rows": pair_rows(records),
    }
    write_text_atomic(store, json.dumps(payload, indent=1) + "\n")
    rewrite_block(args.page, render_protocol(payload), PROTOCOL_BEGIN, PROTOCOL_END)
    print(f"{len(records)} runs -> {store} and {args.page}")


if __name__ == "__main__":
    main()
