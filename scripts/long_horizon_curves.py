"""Measured long-stream curves for the docs (``make long-horizon-curves``, ``make real-stream``).

Runs (or resumes, or reuses when finished with the same config: scripts/run_folders.py) one
``blue edit`` per method:strategy[:nas] on a model (the tiny GPT-2 by default; ``--model
smollm2-135m`` for the real one) and a local CounterFact file, then draws, against the number
of edits, the Frobenius norm of each written matrix, held-out perplexity, and efficacy
(teacher-forced, and in the wild when the runs evaluated it), and writes the numbers between
the markers of ``--doc`` (docs/long-horizon.md by default). Every number in that section comes
from the runs' own files; nothing is typed in.

    python scripts/long_horizon_curves.py --data ../shared/data/counterfact/mcf_random_subsets_1000 \
        --runs memit:blue,memit:blue:nas --edits 1000 --out outputs/long-horizon
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from matplotlib.figure import Figure
from run_folders import run_folder

from blue_cli.reporting.readme_results import rewrite_block

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "long-horizon.md"
FIGURE = REPO / "docs" / "long-horizon-curves.png"
BEGIN, END = "<!-- long-horizon-results:begin -->", "<!-- long-horizon-results:end -->"


def run_name(spec: str) -> str:
    return spec.replace(":", "_")


def settings(args) -> list[str]:
    """What every run shares (the docs section prints these)."""
    return [
        f"model={args.model}",
        f"dataset.path={Path(args.data).resolve()}",
        f"num_edits={args.edits}",
        f"batch_size={args.batch}",
        f"eval_every={args.eval_every}",
        f"eval.perplexity_every={args.perplexity_every}",
        f"eval.max_cases={args.max_cases}",
        "eval.generation=false",
        f"method.norm_anchor.samples={args.anchor_samples}",
        *args.extra.split(),
    ]


def run(spec: str, args) -> Path:
    parts = spec.split(":")
    method, strategy, nas = parts[0], parts[1], len(parts) > 2 and parts[2] == "nas"
    overrides = [
        *settings(args),
        f"method={method}",
        f"strategy={strategy}",
        f"method.norm_anchor.enabled={str(nas).lower()}",
    ]
    return run_folder(Path(args.out) / run_name(spec), overrides, f"stream {spec}")


def read(folder: Path) -> dict:
    def jsonl(name):
        return [json.loads(line) for line in (folder / name).read_text().splitlines() if line.strip()]

    return {
        "summary": json.loads((folder / "summary.json").read_text()),
        "batches": jsonl("batches.jsonl"),
        "evals": jsonl("evals.jsonl"),
    }


def figure(runs: dict[str, dict], w0: dict[int, float]) -> Figure:
    """Four panels against edits; one colour per method:strategy, dashed with norm anchoring,
    one legend for all. The norm panel draws the last written layer (every strategy writes
    it) relative to its pre-edit norm; the table gives every layer's multiple. The last panel
    is efficacy in the wild when the runs evaluated it, else teacher-forced specificity."""
    wild = any("wild_efficacy_em" in r for d in runs.values() for r in d["evals"])
    last_key = "wild_efficacy_em" if wild else "specificity"
    fig = Figure(figsize=(12, 8.8), dpi=100)
    panels = [fig.add_subplot(2, 2, i + 1) for i in range(4)]
    pairs = list(dict.fromkeys(spec.removesuffix(":nas") for spec in runs))
    last_layers = set()
    for spec, data in runs.items():
        colour = f"C{pairs.index(spec.removesuffix(':nas')) % 10}"
        style = "--" if spec.endswith(":nas") else "-"
        edits, total = [], 0
        for row in data["batches"]:
            total += row["edits"]
            edits.append(total)
        last = max(data["batches"][0]["weight_norm"], key=int)
        last_layers.add(last)
        ratio = [1.0] + [r["weight_norm"][last] / w0[int(last)] for r in data["batches"]]
        panels[0].plot([0, *edits], ratio, style, color=colour, label=spec)
        evals = data["evals"]
        ppl = [(r["edits"], r["perplexity"]) for r in evals if r.get("perplexity") is not None]
        panels[1].plot(*zip(*ppl), style, marker="o", color=colour, ms=3)
        for panel, key in ((panels[2], "efficacy"), (panels[3], last_key)):
            pts = [(0, data["summary"].get(f"pre_{key}"))] + [(r["edits"], r[key]) for r in evals if key in r]
            panel.plot(*zip(*pts), style, marker="o", color=colour, ms=3)
    titles = (
        f"‖W‖_F / pre-edit ‖W‖_F, last written layer ({', '.join(sorted(last_layers))})",
        "perplexity on held-out WikiText-2 (log scale)",
        "efficacy, teacher-forced (edited records so far)",
        "efficacy in the wild: exact match of the greedy answer" if wild else "specificity, teacher-forced",
    )
    for panel, title in zip(panels, titles):
        panel.set_title(title, fontsize="medium")
        panel.set_xlabel("edits")
        panel.grid(alpha=0.3)
    panels[0].set_ylabel("x pre-edit norm")
    panels[1].set_yscale("log")
    panels[1].set_ylabel("perplexity")
    for panel in panels[2:]:
        panel.set_ylim(0, 1)
        panel.set_ylabel("rate")
    fig.legend(*panels[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize="small",
               title="method:strategy (dashed: with norm anchoring, :nas)", title_fontsize="small")  # fmt: skip
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    return fig


def original_norms(model: str) -> dict[int, float]:
    """||W0||_F of every layer's rewrite matrix of the unedited model (CPU, float64)."""
    from blue_cli.config.overrides import compose_config
    from blue_cli.models.loading import load_model

    m = compose_config([f"model={model}"]).model
    adapter = load_model(m.source, name=m.name, device="cpu", dtype="float32")
    return {l: float(adapter.rewrite_weight(l).detach().double().norm()) for l in range(adapter.n_layers)}


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 100 else f"{value:.{digits}f}"
    return str(value)


def last_layer_growth(data: dict, w0: dict[int, float]) -> float:
    """Final ||W||_F of the last written layer over its pre-edit value."""
    last = max(data["batches"][-1]["weight_norm"], key=int)
    return data["batches"][-1]["weight_norm"][last] / w0[int(last)]


COMPARED = (  # (what, how to read it from a run)
    ("the last written layer's final ‖W‖_F", last_layer_growth),
    ("final perplexity", lambda d, w0: d["summary"]["perplexity"]),
    ("wild specificity (EM)", lambda d, w0: d["summary"].get("wild_specificity_em")),
    ("teacher-forced efficacy", lambda d, w0: d["summary"].get("efficacy")),
)
# where the runs did not evaluate in the wild, specificity is compared teacher-forced
COMPARED_TEACHER_FORCED = (
    *COMPARED[:2],
    ("teacher-forced specificity", lambda d, w0: d["summary"].get("specificity")),
    COMPARED[3],
)


def evaluated_wild(runs: dict[str, dict]) -> bool:
    return any(d["summary"].get("wild_efficacy_em") is not None for d in runs.values())


def pair_counts(
    runs: dict[str, dict], pairs: list[tuple[str, str]], w0: dict[int, float], compared=COMPARED
) -> list[str]:
    """For each compared quantity: in how many (a, b) pairs b is higher, lower, equal."""
    lines = []
    for what, read in compared:
        higher = lower = equal = 0
        for a, b in pairs:
            x, y = read(runs[a], w0), read(runs[b], w0)
            if x is None or y is None:
                continue
            higher, lower, equal = higher + (y > x), lower + (y < x), equal + (y == x)
        lines.append(f"{what}: higher in {higher}, lower in {lower}, equal in {equal}")
    return lines


def comparisons(runs: dict[str, dict], w0: dict[int, float]) -> str:
    """Counted, not typed: norm anchoring against none, and blue against spread, pair by pair."""
    nas = [(spec, f"{spec}:nas") for spec in runs if f"{spec}:nas" in runs]
    strategies = [
        (spec.replace(":blue", ":spread", 1), spec)
        for spec in runs
        if ":blue" in spec and spec.replace(":blue", ":spread", 1) in runs
    ]
    text = []
    compared = COMPARED if evaluated_wild(runs) else COMPARED_TEACHER_FORCED
    if nas:
        text.append(
            f"With norm anchoring against without it ({len(nas)} pairs of otherwise identical runs): "
            + "; ".join(pair_counts(runs, nas, w0, compared))
            + "."
        )
    if strategies:
        text.append(
            f"`blue` against `spread` ({len(strategies)} pairs, same method and anchoring): "
            + "; ".join(pair_counts(runs, strategies, w0, compared))
            + "."
        )
    return "\n\n".join(text)


def table(runs: dict[str, dict], args, w0: dict[int, float]) -> str:
    wild = evaluated_wild(runs)
    # without the evaluation in the wild, its three columns give way to teacher-forced ones
    middle = (
        "| efficacy wild EM pre -> post | generalization wild EM | specificity wild EM "
        if wild
        else "| generalization TF pre -> post | specificity TF pre -> post "
    )
    lines = [
        "| run | edits | perplexity pre -> post | max ratio | efficacy TF pre -> post "
        + middle
        + "| largest ‖W‖_F pre-edit -> end | edits dropped by NAS | stopped |",
        "|---|---|---|---|---|" + "---|" * (3 if wild else 2) + "---|---|---|",
    ]
    for spec, data in runs.items():
        s, batches, evals = data["summary"], data["batches"], data["evals"]
        pre_ppl = s.get("pre_perplexity")
        worst = max(r["perplexity"] for r in evals if r.get("perplexity") is not None)
        first, last = batches[0], batches[-1]
        start = max(w0[int(l)] for l in first["weight_norm"])
        end = max(last["weight_norm"].values())
        dropped = sum(r.get("anchor_skipped", 0) for r in batches) if "anchor_skipped" in first else "-"
        lines.append(
            f"| {spec} | {s['num_edits']} | {fmt(pre_ppl)} -> {fmt(s.get('perplexity'))} | {fmt(worst / pre_ppl, 2)} "
            f"| {fmt(s.get('pre_efficacy'))} -> {fmt(s.get('efficacy'))} "
            + (
                f"| {fmt(s.get('pre_wild_efficacy_em'))} -> {fmt(s.get('wild_efficacy_em'))} "
                f"| {fmt(s.get('wild_generalization_em'))} | {fmt(s.get('wild_specificity_em'))} "
                if wild
                else f"| {fmt(s.get('pre_generalization'))} -> {fmt(s.get('generalization'))} "
                f"| {fmt(s.get('pre_specificity'))} -> {fmt(s.get('specificity'))} "
            )
            + f"| {fmt(start)} -> {fmt(end)} | {dropped} | {s.get('stopped') or 'no'} |"
        )
    shared = " ".join(f"`{x}`" for x in settings(args)[2:])
    facts = []
    for spec, data in runs.items():
        s, batches, evals = data["summary"], data["batches"], data["evals"]
        ratio = max(r["perplexity"] for r in evals if r.get("perplexity") is not None) / s["pre_perplexity"]
        layers = sorted(batches[0]["weight_norm"], key=int)
        growth = ", ".join(f"layer {l} x{batches[-1]['weight_norm'][l] / w0[int(l)]:.1f}" for l in layers)
        values = ", ".join(
            f"layer {l} {batches[0]['value_norm_mean'][l]:.1f} -> {batches[-1]['value_norm_mean'][l]:.1f}"
            for l in sorted(batches[0]["value_norm_mean"], key=int)
        )
        facts.append(
            f"- `{spec}`: after {s['num_edits']} edits ‖W‖_F is {growth} its pre-edit value; the mean norm of the "
            f"value vectors written went from the first batch to the last: {values}; perplexity peaked at "
            f"{ratio:.2f} x its pre-edit value."
        )
    worst = max(
        max(r["perplexity"] for r in d["evals"] if r.get("perplexity") is not None) / d["summary"]["pre_perplexity"]
        for d in runs.values()
    )
    fewest = min(d["summary"]["num_edits"] for d in runs.values())
    verdict = (
        f"No run's perplexity passed 2 x its pre-edit value within {fewest}"
        f" edits on this model (largest ratio {worst:.2f}): no collapse in that sense."
        if worst < 2
        else f"At least one run's perplexity passed 2 x its pre-edit value (largest ratio {worst:.2f})."
    )
    return (
        f"Runs: {', '.join(f'`{k}`' for k in runs)} (method:strategy, `:nas` = `method.norm_anchor.enabled=true`), "
        f"each on {args.model} with {shared} and the CounterFact file(s) under `{Path(args.data).name}`. "
        f"Efficacy columns are over the {runs[next(iter(runs))]['summary'].get('evaluated_cases')} evaluated records "
        f"(evenly spread over the stream); perplexity {every(args.perplexity_every)}.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(facts)
        + f"\n\n{comparisons(runs, w0)}\n\n{verdict}\n\n![curves]({Path(args.figure).name})"
    )


def every(batches: int) -> str:
    return "after every batch" if batches == 1 else f"every {batches} batches and after the last"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a CounterFact file or folder of files")
    parser.add_argument("--runs", default="memit:blue,memit:blue:nas")
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=2, help="batches between evaluation points")
    parser.add_argument("--max-cases", type=int, default=50)
    parser.add_argument("--perplexity-every", type=int, default=1, help="batches between perplexity points")
    parser.add_argument("--model", default="tiny-gpt2")
    parser.add_argument("--doc", default=str(DOC), help="the page whose results block is rewritten")
    parser.add_argument("--figure", default=str(FIGURE), help="the PNG the page shows, beside it")
    parser.add_argument("--anchor-samples", type=int, default=200)
    parser.add_argument("--out", default="outputs/long-horizon")
    parser.add_argument("--extra", default="", help="more overrides for every run, space-separated")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"error: --data {args.data} does not exist (a CounterFact file or a folder of them)")
    runs = {spec: read(run(spec, args)) for spec in args.runs.split(",")}
    w0 = original_norms(args.model)
    save_figure(figure(runs, w0), Path(args.figure))
    rewrite_block(Path(args.doc), table(runs, args, w0), BEGIN, END)
    print(f"wrote {args.figure} and the results section of {args.doc}")


def save_figure(fig: Figure, path: Path) -> None:
    """Through a temp file and a rename, so a killed run never leaves half a PNG in the docs."""
    part = path.with_name(path.name + ".part")
    fig.savefig(part, format="png")
    part.replace(path)


if __name__ == "__main__":
    main()
