#!/usr/bin/env python
"""Rebuild the committed tiny models in blue_cli/assets/tiny/<name>.

    python scripts/build_tiny_models.py [--only NAME] [--seed 0] [--steps N] [--out DIR]

Each model is trained from scratch on CPU, on one torch thread, for a fixed number of
steps (see ``tiny_build.train``, beside this script), so a rebuild with the same seed, steps and torch
version reproduces the committed weights. A model is written to a temp folder first and
swapped in only when its build succeeded. Takes about 3 minutes per model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The repo root, for blue_cli; tiny_build sits beside this script, already on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZE_LIMIT_MB = 16.0


def _folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    from blue_cli.models.tiny import COMMITTED_DIR, TINY_MODELS
    from tiny_build import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--only", choices=sorted(TINY_MODELS), help="build just this model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help=f"default {train.DEFAULT_STEPS}")
    parser.add_argument("--out", type=Path, default=COMMITTED_DIR, help="parent folder")
    args = parser.parse_args(argv)

    names = [args.only] if args.only else list(TINY_MODELS)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = args.out / name
        for stale in args.out.glob(f".{name}.*"):  # left by an interrupted build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=args.out))
        last = {"shown": 0}

        def progress(step: int, total: int, loss: float, last=last, name=name) -> None:
            if step == total or step - last["shown"] >= max(1, total // 10):
                last["shown"] = step
                print(f"  {name}: step {step}/{total} loss {loss:.3f}", flush=True)

        try:
            info = train.build_tiny_model(name, tmp, seed=args.seed, steps=args.steps, progress=progress)
            tmp.chmod(0o755)  # mkdtemp makes it private
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        facts = info["facts_first100"]
        print(
            f"{name}: {info['seconds']}s, train loss {info['final_train_loss']}, held-out loss "
            f"{info['heldout_loss']} (uniform {info['uniform_loss']}), knows facts "
            f"{facts['rewrite_rate']:.2f} (paraphrases {facts['paraphrase_rate']:.2f}), "
            f"{_folder_mb(target):.2f} MB",
            flush=True,
        )
    total = _folder_mb(args.out)
    print(f"total size of {args.out}: {total:.2f} MB")
    if total > SIZE_LIMIT_MB:
        print(f"warning: over the {SIZE_LIMIT_MB} MB budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
