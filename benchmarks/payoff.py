"""Does vision-language pretraining pay off downstream? VQA and NLVR2 fine-tuned from a pretraining run, and from
the same warmed-up trunk with no vision-language pretraining, with the same fine-tuning steps, batch and seeds.

The control ("warmed-up trunk only") is the pretraining run's model with every parameter outside the image trunk
(`backbone.*`: the ResNet and its 1x1 projection) drawn afresh, as `pretrain` would draw it: the two differ only
in what vision-language pretraining taught the encoder, the decoder and the embeddings. Both fine-tune with the
trunk frozen and cached (`frozen_trunk`), at lr 1e-4, batch 32, no lr drop, the same seeds.

    python benchmarks/payoff.py --run runs/demo                         # 3 seeds (about 80 min on 2 CPU cores)
    python benchmarks/payoff.py --run runs/demo --write-docs docs/pretraining.md
    python benchmarks/payoff.py --quick --run RUN                        # a smoke test (a few steps, 1 seed)

Each finished (model, task, seed) is recorded in `<workdir>/results.json` and reused by a rerun with the same
settings and run, so an interrupted run continues (`--fresh` starts over).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.ablation import baselines, finetune_scored  # noqa: E402  (blind baselines, fine-tuning)
from benchmarks.provenance import config_sha, git_commit, replace_block  # noqa: E402

DOCS_BEGIN = "<!-- payoff:begin -->"
DOCS_END = "<!-- payoff:end -->"
TASKS = {"vqa": "val", "nlvr2": "dev"}
MODELS = {"pretrained": "after vision-language pretraining", "control": "warmed-up trunk only (no VL pretraining)"}


@dataclasses.dataclass(frozen=True)
class Settings:
    seeds: tuple[int, ...] = (0, 1, 2)
    vqa_steps: int = 3000
    nlvr2_steps: int = 1000
    nlvr2_sets: int = 1000
    batch_size: int = 32
    lr: float = 1e-4

    @classmethod
    def quick(cls) -> Settings:
        return cls(seeds=(0,), vqa_steps=4, nlvr2_steps=4, nlvr2_sets=40, batch_size=4)


def run_digest(run: Path) -> str:
    """The pretraining run's identity: a hash of its model weights and config (what the results depend on)."""
    h = hashlib.sha256()
    for name in ("model/config.json", "model/model.safetensors"):
        h.update((run / name).read_bytes())
    return h.hexdigest()[:12]


def control_model(run: Path, out: Path, seed: int = 0) -> Path:
    """`out/` with the run's model, every parameter outside `backbone.` re-drawn (seeded), its tokenizer and
    labels: the same warmed-up trunk with no vision-language pretraining."""
    import torch

    from vlpkit import E2EVLP, build_e2evlp
    from vlpkit.engine import seed_everything

    pretrained = E2EVLP.from_pretrained(run / "model")
    seed_everything(seed)
    fresh = build_e2evlp(pretrained.config)
    state = fresh.state_dict()
    trunk = {k: v for k, v in pretrained.state_dict().items() if k.startswith("backbone.")}
    state.update(trunk)
    fresh.load_state_dict(state, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in trunk.items())
    shutil.rmtree(out, ignore_errors=True)
    fresh.save_pretrained(out / "model")
    shutil.copytree(run / "tokenizer", out / "tokenizer")
    if (run / "labels.json").is_file():
        shutil.copy(run / "labels.json", out / "labels.json")
    return out


def finetune(task: str, checkpoint: Path, setup, settings: Settings, seed: int, output_dir: Path) -> dict:
    recipe = dict(trainer={"batch_size": settings.batch_size, "lr": settings.lr, "backbone_lr": 0.0,
                           "lr_drop_epochs": [], "seed": seed}, frozen_trunk=True)
    overrides = {"max_steps": settings.vqa_steps if task == "vqa" else settings.nlvr2_steps, "progress_bar": False,
                 "save_every": 0, "keep_last": 1, "log_every": 0, "eval_every": 0}
    shutil.rmtree(output_dir, ignore_errors=True)
    start = time.perf_counter()
    metrics = finetune_scored(task, checkpoint, setup, recipe, overrides, output_dir).metrics[TASKS[task]]
    out = {"accuracy": float(metrics["accuracy"]), "seconds": time.perf_counter() - start}
    out.update({k: float(v) for k, v in metrics.items() if k.startswith("accuracy_")})
    for sub in ("checkpoints", "model"):
        shutil.rmtree(output_dir / sub, ignore_errors=True)
    return out


def summarise(records: dict) -> dict:
    out: dict[str, Any] = {}
    for model in MODELS:
        for task in TASKS:
            accs = [r["accuracy"] for k, r in sorted(records.items()) if k.startswith(f"{model}/{task}/")]
            out[f"{model}/{task}"] = {"accuracies": accs, "mean": statistics.fmean(accs) if accs else None,
                                      "std": statistics.stdev(accs) if len(accs) > 1 else None}
    return out


def _fmt(entry: dict) -> str:
    if entry["mean"] is None:
        return "-"
    return f"{entry['mean']:.1f}" + (f" ± {entry['std']:.1f}" if entry["std"] is not None else "")


def markdown(summary: dict, base: dict, settings: Settings, run: Path, digest: str, config_hash: str,
             commit: str, changed: list[str] = ()) -> str:
    gain = {t: summary[f"pretrained/{t}"]["mean"] - summary[f"control/{t}"]["mean"]
            for t in TASKS if summary[f"pretrained/{t}"]["mean"] is not None
            and summary[f"control/{t}"]["mean"] is not None}
    lines = [
        f"Generated by `benchmarks/payoff.py` (config `e2evlp-tiny` sha256 {config_hash}, run weights {digest}, "
        f"commit {commit}); {len(settings.seeds)} fine-tuning seeds {list(settings.seeds)}, mean ± sample std."
        + (f" The run changed the shipped config: {', '.join(changed)}." if changed else ""),
        f"Both fine-tune with the trunk frozen and cached, batch {settings.batch_size}, lr {settings.lr:g}: VQA "
        f"{settings.vqa_steps} steps (val), NLVR2 {settings.nlvr2_steps} steps on {settings.nlvr2_sets} sets (dev).",
        "",
        "| starting point | VQA val | NLVR2 dev |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {_fmt(summary[f'{m}/vqa'])} | {_fmt(summary[f'{m}/nlvr2'])} |"
              for m, label in MODELS.items()]
    lines += [f"| blind: per-question-type majority / chance | {base['vqa']['majority']:.1f} / "
              f"{base['vqa']['chance']:.1f} | {base['nlvr2']['majority']:.1f} / 50.0 |",
              f"| ceiling | {base['vqa']['ceiling']:.1f} | {base['nlvr2']['ceiling']:.1f} |", ""]
    if gain:
        lines.append("Gain from pretraining: " + ", ".join(f"{t.upper()} {g:+.1f} points" for t, g in gain.items())
                     + ".")
    return "\n".join(lines)


IGNORED = {"trainer.output_dir", "trainer.progress_bar", "model.overrides.backbone_weights"}


def changed_keys(run: Path) -> list[str]:
    """Dotted keys where the run's pretraining config differs from the shipped e2evlp-tiny.yaml (where it was
    written and the warm-up's trunk file aside): a table from such a run is not the shipped recipe's."""
    from vlpkit.pretraining.run import load_config

    def flat(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, sub in node.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    shipped = flat(json.loads(json.dumps(load_config("e2evlp-tiny"))))
    used = flat(json.loads((run / "pretrain_config.json").read_text()))
    return sorted(k for k in set(shipped) | set(used) if k not in IGNORED and shipped.get(k) != used.get(k))


def write_docs(path: Path, section: str) -> None:
    replace_block(path, DOCS_BEGIN, DOCS_END, section)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo", help="a finished pretraining run folder (`vlpkit demo`)")
    parser.add_argument("--workdir", default=None, help="default: runs/payoff[-quick]")
    parser.add_argument("--output", default=None, help="JSON of every record and the summary")
    parser.add_argument("--write-docs", default=None, help="replace the payoff block of this markdown file")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--vqa-steps", type=int, default=None)
    parser.add_argument("--nlvr2-steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args(argv)

    from vlpkit.pretraining.shapes import prepare_shapes

    settings = Settings.quick() if args.quick else Settings()
    if args.seeds:
        settings = dataclasses.replace(settings, seeds=tuple(args.seeds))
    for name in ("vqa_steps", "nlvr2_steps"):
        if getattr(args, name) is not None:
            settings = dataclasses.replace(settings, **{name: getattr(args, name)})
    run = Path(args.run)
    if not (run / "model" / "model.safetensors").is_file():
        raise SystemExit(f"--run {run}: no model/model.safetensors (run `vlpkit demo` or `vlpkit pretrain` first)")
    workdir = Path(args.workdir or ("runs/payoff-quick" if args.quick else "runs/payoff"))
    workdir.mkdir(parents=True, exist_ok=True)
    digest = run_digest(run)
    key = json.dumps({"run": digest, "settings": dataclasses.asdict(settings)}, sort_keys=True)
    record_file = workdir / "results.json"
    saved = json.loads(record_file.read_text()) if record_file.is_file() and not args.fresh else {}
    records = saved.get("records", {}) if saved.get("key") == key else {}
    world = json.loads((run / "pretrain_config.json").read_text())["data"].get("shapes", {})
    # the run's world with more NLVR2 sets: another world (in the cache, not the run's folder); both models
    # read it with the run's tokenizer
    world = {k: v for k, v in world.items() if k != "root"}
    setup = prepare_shapes(**{**world, "nlvr2_sets": settings.nlvr2_sets})
    control = control_model(run, workdir / "control")
    for seed in settings.seeds:
        for model, checkpoint in (("pretrained", run), ("control", control)):
            for task in TASKS:
                name = f"{model}/{task}/{seed}"
                if name in records:
                    continue
                records[name] = finetune(task, checkpoint, setup, settings, seed, workdir / model / task)
                print(f"{name}: {TASKS[task]} accuracy {records[name]['accuracy']:.1f} "
                      f"({records[name]['seconds']:.0f} s)", flush=True)
                record_file.write_text(json.dumps({"key": key, "records": records}, indent=1) + "\n")
    summary = summarise(records)
    section = markdown(summary, baselines(setup), settings, run, digest, config_sha(), git_commit(),
                       changed_keys(run))
    print(section)
    result = {"settings": dataclasses.asdict(settings), "run": str(run), "run_digest": digest,
              "records": records, "summary": summary}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    if args.write_docs:
        write_docs(Path(args.write_docs), section)
    return result


if __name__ == "__main__":
    main()
