"""The visual-learning ablation of the paper (Table 3) on the shapes world.

E2E-VLP's central claim is that object detection, attribute prediction and image-to-text generation in
pretraining make the end-to-end model better at VQA and NLVR2. The paper's Table 3 (6-layer encoder, ResNet-50;
VQA test-dev / NLVR2 dev): full 70.76 / 72.12, without generation 70.20 / 71.59, without attributes
69.92 / 70.92, without detection 68.85 / 70.38. This script asks whether the direction holds in vlpkit:

1. pretrain `e2evlp-tiny` (vlpkit/configs/e2evlp-tiny.yaml, read at run time) on one shared shapes world with
   each variant's tasks, with the same steps and batch for every variant (equal compute):

   | variant        | objective tasks                                  |
   |----------------|--------------------------------------------------|
   | full           | mlm, itm, detection, attributes, caption         |
   | no_caption     | mlm, itm, detection, attributes (w/o generation) |
   | no_attributes  | mlm, itm, detection, caption                     |
   | no_detection   | mlm, itm, caption (hence no attributes either)   |
   | mlm_itm        | mlm, itm                                         |
   | scratch        | no pretraining: a fresh e2evlp-tiny, same tokenizer |

   Each source of the mixture keeps the same images and weight; its task list is cut to the objective's tasks,
   so a disabled task gets neither a loss term nor targets (`PretrainingObjective` would ignore it anyway).
2. fine-tune VQA (`vlpkit.tasks.vqa.finetune_vqa`) and NLVR2 (`vlpkit.tasks.nlvr2.finetune_nlvr2`) from each
   checkpoint with the same budget, and report the official accuracies (VQA val, NLVR2 dev), mean and standard
   deviation over seeds, beside the paper's numbers, with the blind baselines (chance, majority) and the
   ceiling, and a reading of which differences from the full model exceed the seed-to-seed spread.

    python benchmarks/ablation.py                       # full run: 3 seeds (about 50 min on 2 idle CPU cores)
    python benchmarks/ablation.py --quick               # 1 seed, a few steps, a tiny world (a smoke test)
    python benchmarks/ablation.py --output .benchmarks/ablation.json --write-docs docs/paper_fidelity.md

Budget of the defaults (`Settings`), measured with OMP_NUM_THREADS=1 on a shared 2-core machine, in CPU seconds:
one pretraining (160 steps of 16 images at 64 px) about 126, one VQA fine-tuning (100 steps of 16, then 600 val
questions) about 62, one NLVR2 fine-tuning (100 steps of 16 pairs, then 320 dev statements) about 105. The full
run, 15 pretrainings and 36 fine-tunings, is about 4,900 CPU seconds: 82 minutes on one thread, about 48 on two
(1.7x). `--set FIELD=VALUE` changes the budget (e.g. `--set pretrain_steps=300 image_size=96`), `--config` the
model and recipe (a YAML file like vlpkit/configs/e2evlp-tiny.yaml), `--variants` the variants run.

Runs write under `--workdir` (default `runs/ablation[-quick]`): `<variant>/seed<k>/{pretrain,vqa,nlvr2}/`.
Checkpoints and weights are deleted once a run has been scored (`--keep-weights` keeps them); each finished
(variant, seed) is recorded in `<workdir>/results.json`, and a rerun with the same settings reuses it, so an
interrupted run continues where it stopped (`--fresh` starts over; use it after changing vlpkit's code, which
the record does not track).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "e2evlp-tiny"
DOCS_BEGIN = "<!-- ablation:begin -->"
DOCS_END = "<!-- ablation:end -->"
TASKS = ("vqa", "nlvr2")
TASK_LABELS = {"vqa": "VQA", "nlvr2": "NLVR2"}
EVAL_SPLITS = {"vqa": "val", "nlvr2": "dev"}

ALL_TASKS = ("mlm", "itm", "detection", "attributes", "caption")
VARIANTS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "full": ("all tasks", ALL_TASKS),
    "no_caption": ("w/o generation", ("mlm", "itm", "detection", "attributes")),
    "no_attributes": ("w/o attributes", ("mlm", "itm", "detection", "caption")),
    "no_detection": ("w/o detection (and attributes)", ("mlm", "itm", "caption")),
    "mlm_itm": ("MLM + ITM only", ("mlm", "itm")),
    "scratch": ("no pretraining", None),
}
# E2E-VLP Table 3 (6-layer encoder, ResNet-50): VQA test-dev, NLVR2 dev.
PAPER = {"full": (70.76, 72.12), "no_caption": (70.20, 71.59), "no_attributes": (69.92, 70.92),
         "no_detection": (68.85, 70.38)}


@dataclass(frozen=True)
class Settings:
    """Everything a result depends on besides the code and vlpkit/configs/e2evlp-tiny.yaml (whose content is
    part of the results key too).

    World: `num_images` images rendered at `image_size` px (split by `split_fractions`), `nlvr2_sets` NLVR2 sets
    of 8 images and 8 statements. Pretraining: `pretrain_steps` updates of `pretrain_batch` images, lr warm-up
    over `pretrain_warmup` steps (other trainer settings from the config). Fine-tuning: `finetune_steps` updates
    of `finetune_batch` questions (VQA) or image pairs (NLVR2) at the config's lr / backbone lr.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    config: str = CONFIG
    num_images: int = 1000
    image_size: int = 64
    nlvr2_sets: int = 400
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    pretrain_steps: int = 160
    pretrain_batch: int = 16
    pretrain_warmup: int = 16
    finetune_steps: int = 100
    finetune_batch: int = 16
    finetune_warmup: int = 10

    @classmethod
    def quick(cls, seeds: tuple[int, ...] = (0,)) -> Settings:
        return cls(seeds=seeds, num_images=48, nlvr2_sets=8, pretrain_steps=2, pretrain_batch=4,
                   pretrain_warmup=0, finetune_steps=2, finetune_batch=4, finetune_warmup=0)

    def world(self) -> dict[str, Any]:
        """The `data.shapes` options of the world (the config's seed and vocab_size are kept)."""
        return {"num_images": self.num_images, "nlvr2_sets": self.nlvr2_sets,
                "split_fractions": list(self.split_fractions), "scene": {"image_size": self.image_size}}

    def image(self) -> dict[str, Any]:
        """Train and eval image size: shorter side `image_size`, longer side at most 1.25x (the shapes world's
        128 / 160 scaled down)."""
        return {"train_scales": [self.image_size], "max_size": round(1.25 * self.image_size),
                "eval_size": self.image_size}


# ---- runs ------------------------------------------------------------------------------------------------------
def pretraining_config(settings: Settings, tasks: tuple[str, ...], seed: int, output_dir: Path) -> dict:
    """The settings' config (read now, e.g. vlpkit/configs/e2evlp-tiny.yaml) with this ablation's world, image
    size, budget and objective tasks; each source's task list (the config's, else `shapes_sources`' default) is
    cut to `tasks`, and a source left with none is dropped."""
    import inspect

    from vlpkit.pretraining.run import load_config
    from vlpkit.pretraining.shapes import shapes_sources

    defaults = {name: inspect.signature(shapes_sources).parameters[f"{name}_tasks"].default
                for name in ("coco", "vg")}
    base = load_config(settings.config)
    sources = []
    for source in base.get("data", {}).get("sources", [{"name": "coco"}, {"name": "vg"}]):
        served = source.get("tasks", defaults.get(source["name"], ALL_TASKS))
        kept = [t for t in served if t in tasks]
        if kept:
            sources.append({**source, "tasks": kept})
    if not sources:
        raise ValueError(f"no pretraining source serves any of the tasks {list(tasks)}")
    image = settings.image()
    overrides = [f"objective.tasks={json.dumps(list(tasks))}",
                 f"data.sources={json.dumps(sources)}",
                 f"trainer.output_dir={json.dumps(str(output_dir))}",
                 f"trainer.max_steps={settings.pretrain_steps}",
                 f"trainer.batch_size={settings.pretrain_batch}",
                 f"trainer.warmup_steps={settings.pretrain_warmup}",
                 f"trainer.seed={seed}",
                 "trainer.save_every=0", "trainer.keep_last=1", "trainer.log_every=0", "trainer.eval_every=0",
                 "trainer.progress_bar=false"]
    overrides += [f"data.shapes.{k}={json.dumps(v)}" for k, v in settings.world().items()]
    overrides += [f"data.image.{k}={json.dumps(v)}" for k, v in image.items()]
    return load_config(settings.config, overrides)


def prepare_world(settings: Settings):
    """The shared shapes world (generated once, cached under $VLPKIT_CACHE) with its tokenizer."""
    from vlpkit.pretraining.shapes import prepare_shapes

    cfg = pretraining_config(settings, ALL_TASKS, 0, Path("unused"))
    return prepare_shapes(**cfg["data"]["shapes"])


def fresh_model(settings: Settings, setup, seed: int):
    """A fresh model built as `pretrain` builds it (seeded; preset, world sizes, the config's overrides)."""
    from vlpkit.builder import build_e2evlp
    from vlpkit.engine import seed_everything

    model_cfg = pretraining_config(settings, ALL_TASKS, seed, Path("unused")).get("model", {})
    seed_everything(seed)
    return build_e2evlp(model_cfg.get("preset", "e2evlp-tiny"),
                        **{**setup.model_overrides(), **model_cfg.get("overrides", {})})


def finetune(task: str, checkpoint, setup, settings: Settings, seed: int, output_dir: Path) -> dict[str, Any]:
    """Fine-tune `task` ("vqa" | "nlvr2") from `checkpoint` (a pretraining run folder, or a fresh E2EVLP) with
    the ablation's budget; -> {"accuracy", "seconds", "train_loss_first", "train_loss_last", ...}."""
    from vlpkit.engine import seed_everything
    from vlpkit.pretraining.run import load_config

    trainer = load_config(settings.config).get("trainer", {})
    recipe = dict(trainer={"batch_size": settings.finetune_batch, "lr": float(trainer.get("lr", 1e-4)),
                           "backbone_lr": float(trainer.get("backbone_lr", 1e-5)), "lr_drop_epochs": [],
                           "warmup_steps": settings.finetune_warmup, "seed": seed}, **settings.image())
    overrides = {"max_steps": settings.finetune_steps, "progress_bar": False, "save_every": 0, "keep_last": 1,
                 "log_every": 0, "eval_every": 0}
    shutil.rmtree(output_dir, ignore_errors=True)
    seed_everything(seed)  # the new head is drawn before the trainer seeds
    start, cpu = time.perf_counter(), time.process_time()
    report = finetune_scored(task, checkpoint, setup, recipe, overrides, output_dir)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    metrics = report.metrics[EVAL_SPLITS[task]]
    out = {"accuracy": float(metrics["accuracy"]), "seconds": seconds, "cpu_seconds": cpu,
           "train_loss_first": report.train.first_loss, "train_loss_last": report.train.last_loss}
    out.update({k: float(v) for k, v in metrics.items() if k.startswith("accuracy_") or k == "consistency"})
    return out


def finetune_scored(task: str, checkpoint, setup, recipe: dict, overrides: dict, output_dir: Path):
    """Fine-tune "vqa" or "nlvr2" on the world (`setup`) with a recipe (task config fields) and trainer overrides,
    evaluating only the scored split (VQA val, NLVR2 dev; not test / test1); -> the task's `FinetuneResult`."""
    from vlpkit.tasks.nlvr2 import NLVR2Config, NLVR2Data, finetune_nlvr2
    from vlpkit.tasks.vqa import VQAConfig, VQAData, finetune_vqa

    split = EVAL_SPLITS[task]
    if task == "vqa":
        data = VQAData.from_shapes(setup)
        data = dataclasses.replace(data, eval={split: data.eval[split]})
        return finetune_vqa(checkpoint, data, output_dir, VQAConfig(**recipe, answer_min_count=1), overrides)
    data = NLVR2Data.from_shapes(setup)
    data = dataclasses.replace(data, eval={split: data.eval[split]})
    return finetune_nlvr2(checkpoint, data, output_dir, NLVR2Config(**recipe), overrides)


def run_one(variant: str, seed: int, settings: Settings, setup, workdir: Path, keep_weights: bool) -> dict:
    """Pretrain (unless `scratch`), then fine-tune both tasks, for one (variant, seed)."""
    from vlpkit.pretraining.run import pretrain

    tasks = VARIANTS[variant][1]
    run_dir = workdir / variant / f"seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    record: dict[str, Any] = {"variant": variant, "seed": seed, "tasks": list(tasks) if tasks else []}
    if tasks is not None:
        cfg = pretraining_config(settings, tasks, seed, run_dir / "pretrain")
        start, cpu = time.perf_counter(), time.process_time()
        result = pretrain(cfg)
        record["pretrain_seconds"] = time.perf_counter() - start
        record["pretrain_cpu_seconds"] = time.process_time() - cpu
        losses = [r["loss"] for r in result.history if math.isfinite(r.get("loss", math.nan))]
        record["pretrain_loss_first"], record["pretrain_loss_last"] = (losses[0], losses[-1]) if losses else (None,) * 2
        del result
        shutil.rmtree(run_dir / "pretrain" / "checkpoints", ignore_errors=True)
    for task in TASKS:
        checkpoint = run_dir / "pretrain" if tasks is not None else fresh_model(settings, setup, seed)
        record[task] = finetune(task, checkpoint, setup, settings, seed, run_dir / task)
        if not keep_weights:
            for sub in ("checkpoints", "model"):
                shutil.rmtree(run_dir / task / sub, ignore_errors=True)
    if not keep_weights:
        shutil.rmtree(run_dir / "pretrain" / "model", ignore_errors=True)
    return record


# ---- summary and reading -----------------------------------------------------------------------------------------
def baselines(setup) -> dict[str, dict[str, float]]:
    """Blind baselines and ceilings in percent, from the world's stats.json (the splits the ablation scores).

    VQA: chance = uniform guessing among the answers seen for each question type; majority = the train-majority
    answer of each question type (`majority_baseline`) and the single most frequent train answer; ceiling = the
    official accuracy of the annotated answer (100 when all 10 answers agree, `answer_noise=0`).
    NLVR2: chance 50 (two labels); majority = train's majority label on dev; ceiling 100 (labels are exact).
    """
    stats = setup.world.stats()
    vqa = stats["vqa"][EVAL_SPLITS["vqa"]]
    by_type = vqa["by_question_type"]
    total = sum(v["count"] for v in by_type.values())
    chance = sum(v["chance_accuracy"] * v["count"] for v in by_type.values()) / max(total, 1)
    nlvr2 = stats["nlvr2"][EVAL_SPLITS["nlvr2"]]
    return {
        "vqa": {"chance": 100 * chance, "majority": 100 * vqa["majority_baseline"],
                "global_majority": 100 * vqa["global_majority_baseline"], "ceiling": 100 * vqa["ceiling"],
                "num_questions": vqa["num_questions"]},
        "nlvr2": {"chance": 50.0, "majority": 100 * nlvr2["majority_accuracy"], "ceiling": 100 * nlvr2["ceiling"],
                  "num_questions": nlvr2["num_statements"]},
    }


def summarise(records: list[dict], seeds: tuple[int, ...], variants=tuple(VARIANTS)) -> dict[str, dict]:
    """Per variant and task: accuracies per seed, mean and sample standard deviation (None with one seed)."""
    out = {}
    for variant, (label, tasks) in VARIANTS.items():
        if variant not in variants:
            continue
        rows = {r["seed"]: r for r in records if r["variant"] == variant and r["seed"] in seeds}
        entry: dict[str, Any] = {"label": label, "tasks": list(tasks) if tasks else [], "seeds": sorted(rows)}
        for task in TASKS:
            accs = [rows[s][task]["accuracy"] for s in sorted(rows)]
            entry[task] = {"accuracies": accs, "mean": statistics.fmean(accs) if accs else None,
                           "std": statistics.stdev(accs) if len(accs) > 1 else None}
        if variant in PAPER:
            entry["paper"] = dict(zip(TASKS, PAPER[variant]))
        out[variant] = entry
    return out


def _fmt(mean, std) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def reading(summary: dict, base: dict) -> list[str]:
    """Markdown bullets. Per task of `base`: which variants beat the blind majority baseline (mean above it, by
    more than 2 std when there is a spread). Per ablated variant and task: the difference from the full model
    against the spread (|diff| > 2 x pooled std exceeds the seed-to-seed spread) and the paper's direction. Last,
    how many of the comparisons with the paper go its way and exceed the spread."""
    lines = []
    for task in TASKS:
        if task not in base:
            continue
        majority = base[task]["majority"]
        above = [e["label"] for e in summary.values()
                 if e[task]["mean"] is not None and e[task]["mean"] - 2 * (e[task]["std"] or 0.0) > majority]
        if not above:
            lines.append(f"- **{TASK_LABELS[task]}: no variant beats the blind majority baseline ({majority:.2f})**: "
                         "at this budget no fine-tuned model is shown to use more than the text, and the "
                         f"{TASK_LABELS[task]} column says nothing about the paper's claim.")
        else:
            lines.append(f"- {TASK_LABELS[task]}: {len(above)} of {len(summary)} variants beat the blind majority "
                         f"baseline ({majority:.2f}): {', '.join(above)}.")
    if "full" not in summary:
        return lines + ["- (the full model was not run: nothing to compare with)"]
    full = summary["full"]
    agree = compared = 0
    for variant, entry in summary.items():
        if variant == "full":
            continue
        parts = []
        for task in TASKS:
            a, b = full[task], entry[task]
            if a["mean"] is None or b["mean"] is None:
                continue
            diff = round(b["mean"] - a["mean"], 2) + 0.0  # + 0.0: a rounded -0.004 prints as +0.00, not -0.00
            text = f"{TASK_LABELS[task]} {diff:+.2f}"
            exceeds = False
            if a["std"] is None or b["std"] is None:
                text += " (one seed: no spread to compare with)"
            else:
                pooled = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)
                exceeds = abs(diff) > 2 * pooled
                text += f" ({'exceeds' if exceeds else 'within'} 2 x pooled std = {2 * pooled:.2f})"
            if variant in PAPER:
                paper = PAPER[variant][TASKS.index(task)] - PAPER["full"][TASKS.index(task)]
                if abs(diff) < 0.005:  # equal at the printed precision
                    text += f", no change where the paper has {paper:+.2f}"
                else:
                    text += f", {'same direction as' if diff * paper > 0 else 'opposite to'} the paper's {paper:+.2f}"
                compared += 1
                agree += exceeds and diff * paper > 0 and abs(diff) >= 0.005
            parts.append(text)
        lines.append(f"- **{entry['label']}** vs all tasks: " + "; ".join(parts) + ".")
    if compared:
        lines.append(f"- In all, {agree} of the {compared} differences the paper reports (its three ablations x "
                     "two tasks) are reproduced here in direction and beyond the seed-to-seed spread.")
    return lines


def model_description(settings: Settings) -> str:
    """The config's model: its preset and overrides, e.g. "e2evlp-tiny (backbone_norm=batch_norm)"."""
    from vlpkit.pretraining.run import load_config

    model = load_config(settings.config).get("model", {})
    overrides = model.get("overrides") or {}
    extra = f" ({', '.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else ""
    return f"{model.get('preset', 'e2evlp-tiny')}{extra}"


def markdown(summary: dict, base: dict, settings: Settings, seconds: float | None, reused: int = 0) -> str:
    """The generated docs section: settings, table beside the paper, baselines, reading."""
    n = len(settings.seeds)
    head = ("| variant | pretraining tasks | VQA val (ours) | NLVR2 dev (ours) | VQA test-dev (paper) | "
            "NLVR2 dev (paper) |\n|---|---|---|---|---|---|")
    rows = []
    for entry in summary.values():
        paper = {k: f"{v:.2f}" for k, v in entry.get("paper", {}).items()}
        tasks = ", ".join(entry["tasks"]) if entry["tasks"] else "none"
        rows.append(f"| {entry['label']} | {tasks} | {_fmt(entry['vqa']['mean'], entry['vqa']['std'])} | "
                    f"{_fmt(entry['nlvr2']['mean'], entry['nlvr2']['std'])} | "
                    f"{paper.get('vqa', '-')} | {paper.get('nlvr2', '-')} |")
    vqa, nlvr2 = base["vqa"], base["nlvr2"]
    model = model_description(settings)
    text = [
        f"Generated by `python benchmarks/ablation.py` (`make ablation`): accuracy in percent, mean ± sample "
        f"standard deviation over {n} seed{'s' if n > 1 else ''} ({', '.join(map(str, settings.seeds))}).",
        "",
        f"Setting: {model} (config `{settings.config}`) on one shapes world of {settings.num_images} "
        f"images at {settings.image_size} px and {settings.nlvr2_sets} NLVR2 sets; pretraining "
        f"{settings.pretrain_steps} steps of batch {settings.pretrain_batch} for every variant (equal compute), "
        f"then VQA and NLVR2 fine-tuning of {settings.finetune_steps} steps of batch {settings.finetune_batch} "
        f"each. Ours: VQA val ({vqa['num_questions']} questions), NLVR2 dev ({nlvr2['num_questions']} "
        "statements); the paper: ResNet-50 with a 6-layer encoder, VQA test-dev and NLVR2 dev (Table 3).",
        "",
        head, *rows, "",
        f"Baselines on the same splits: VQA chance (uniform over each question type's answers) "
        f"{vqa['chance']:.2f}, majority answer per question type {vqa['majority']:.2f}, most frequent answer "
        f"{vqa['global_majority']:.2f}, ceiling {vqa['ceiling']:.2f} (all 10 answers agree); NLVR2 chance 50.00, "
        f"majority label {nlvr2['majority']:.2f}, ceiling {nlvr2['ceiling']:.2f}. Questions and statements ask "
        "for counts, colours, shapes and sizes of specific objects and spatial relations between them, so "
        "object-level pretraining has something to teach.",
        "",
        "Reading: each variant against all tasks; a difference is flagged as exceeding the seed-to-seed spread "
        "when it is larger than twice the pooled standard deviation of the two rows.",
        "",
        *reading(summary, base),
    ]
    if seconds is not None:
        note = f" ({reused} runs recorded by an earlier, interrupted run are not counted)" if reused else ""
        text += ["", f"Run time: {seconds / 60:.1f} min{note}."]
    return "\n".join(text) + "\n"


DOCS_SECTION = re.compile(re.escape(DOCS_BEGIN) + r".*?" + re.escape(DOCS_END), re.S)


def check_docs(path: Path) -> str:
    """The text of `path`, which must hold exactly one pair of ablation markers."""
    text = path.read_text()
    found = (text.count(DOCS_BEGIN), text.count(DOCS_END), len(DOCS_SECTION.findall(text)))
    if found != (1, 1, 1):
        raise ValueError(f"{path} must hold exactly one {DOCS_BEGIN} followed by one {DOCS_END}; found "
                         f"{found[0]} begin and {found[1]} end marker(s)")
    return text


def write_docs(path: Path, section: str) -> None:
    """Replace the text between the ablation markers of `path` by `section`."""
    text = check_docs(path)
    path.write_text(DOCS_SECTION.sub(lambda _: f"{DOCS_BEGIN}\n{section}{DOCS_END}", text))


# ---- driver ------------------------------------------------------------------------------------------------------
def results_key(settings: Settings) -> str:
    """Hash of the settings and the config's content: recorded runs are reused only when both match."""
    from vlpkit.pretraining.run import load_config

    blob = json.dumps({"settings": {**asdict(settings), "seeds": None},
                       "config": load_config(settings.config)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_ablation(settings: Settings, workdir: Path, variants=tuple(VARIANTS), fresh: bool = False,
                 keep_weights: bool = False, log=print) -> dict[str, Any]:
    """Every (variant, seed) run, reusing those recorded in `<workdir>/results.json` under the same settings."""
    start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "results.json"
    key = results_key(settings)
    records: list[dict] = []
    if store.is_file() and not fresh:
        saved = json.loads(store.read_text())
        if saved.get("key") == key:
            records = saved["records"]
    done = {(r["variant"], r["seed"]) for r in records}
    t = time.perf_counter()
    setup = prepare_world(settings)
    world_seconds = time.perf_counter() - t
    log(f"shapes world {setup.world.root} ({'reused' if setup.world.reused else 'generated'}, {world_seconds:.1f} s)")
    for seed in settings.seeds:
        for variant in variants:
            if (variant, seed) in done:
                log(f"{variant} seed {seed}: recorded")
                continue
            record = run_one(variant, seed, settings, setup, workdir, keep_weights)
            records.append(record)
            store.write_text(json.dumps({"key": key, "records": records}, indent=1) + "\n")
            log(f"{variant} seed {seed}: VQA {record['vqa']['accuracy']:.2f}, NLVR2 {record['nlvr2']['accuracy']:.2f}"
                f" (pretrain {record.get('pretrain_seconds', 0):.0f} s, VQA {record['vqa']['seconds']:.0f} s, "
                f"NLVR2 {record['nlvr2']['seconds']:.0f} s)")
    seconds = time.perf_counter() - start
    records = [r for r in records if r["seed"] in settings.seeds and r["variant"] in variants]
    summary = summarise(records, settings.seeds, variants)
    base = baselines(setup)
    timings = {"world_seconds": world_seconds, "total_seconds": seconds,
               "pretrain_seconds": [r["pretrain_seconds"] for r in records if "pretrain_seconds" in r],
               "vqa_seconds": [r["vqa"]["seconds"] for r in records],
               "nlvr2_seconds": [r["nlvr2"]["seconds"] for r in records],
               "reused_runs": len(done & {(v, s) for v in variants for s in settings.seeds})}
    return {"settings": asdict(settings), "key": key, "world": str(setup.world.root),
            "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None, "baselines": base,
            "summary": summary, "records": records,
            "timings": timings, "markdown": markdown(summary, base, settings, seconds, timings["reused_runs"])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 steps, a 48-image world (a smoke test)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: 0 1 2; quick: 0)")
    parser.add_argument("--output", type=Path, help="write the results (JSON) here")
    parser.add_argument("--write-docs", type=Path, metavar="MD",
                        help=f"replace the section between {DOCS_BEGIN} and {DOCS_END} of this file")
    parser.add_argument("--config", default=CONFIG,
                        help=f"pretraining config: a shipped name or a YAML/JSON file (default: {CONFIG})")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="run only these variants (default: all six)")
    budget = [f.name for f in dataclasses.fields(Settings) if f.name not in ("seeds", "config")]
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="change a budget setting, e.g. --set pretrain_steps=100 image_size=96 "
                             f"(fields: {', '.join(budget)})")
    parser.add_argument("--workdir", type=Path, help="run folders (default: runs/ablation or runs/ablation-quick)")
    parser.add_argument("--fresh", action="store_true", help="ignore the runs recorded in the workdir")
    parser.add_argument("--keep-weights", action="store_true", help="keep checkpoints and fine-tuned weights")
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    if args.seeds:
        if len(set(args.seeds)) != len(args.seeds):
            parser.error(f"--seeds repeats a seed: {args.seeds}")
        settings = Settings(**{**asdict(settings), "seeds": tuple(args.seeds)})
    changes = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or name not in budget:
            parser.error(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {budget}")
        try:
            changes[name] = tuple(float(v) for v in value.split(",")) if name == "split_fractions" else int(value)
        except ValueError:
            parser.error(f"--set {item!r}: {name} takes "
                         + ("three comma-separated fractions" if name == "split_fractions" else "an integer"))
    if args.config != CONFIG:
        changes["config"] = str(args.config)
    if changes:
        settings = Settings(**{**asdict(settings), **changes})
    if args.write_docs is not None:
        if not args.write_docs.is_file():
            parser.error(f"--write-docs {args.write_docs}: no such file")
        try:
            check_docs(args.write_docs)  # before the run, not after an hour of it
        except ValueError as err:
            parser.error(f"--write-docs: {err}")
    workdir = args.workdir or ROOT / "runs" / ("ablation-quick" if args.quick else "ablation")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_ablation(settings, workdir, tuple(args.variants), fresh=args.fresh, keep_weights=args.keep_weights)
    print(result["markdown"])
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + "\n")
    if args.write_docs is not None:
        write_docs(args.write_docs, result["markdown"])
    return result


if __name__ == "__main__":
    main()
