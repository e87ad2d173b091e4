"""Does the data loader keep up with an e2evlp-6-r50 pretraining step at 800x1333? Measured on this machine, and
carried to a GPU through the step's FLOPs.

1. Writes a COCO-format set in a scratch folder: photo-like JPEGs of 640x384 (aspect 1333:800, about the size
   and file weight of a COCO image), 5 boxes and 5 captions each, and a WordPiece vocabulary trained on the
   captions.
2. Loader rate, one process (= one DataLoader worker): `PretrainingDataset` + `PretrainingCollator` built from
   the shipped `e2evlp-6-r50.yaml` data section (its image transforms: random scales 480-800, crop, flip, at
   most 1333) and, separately, at the largest scale only (every image 800x1333).
3. The training step at 800x1333, batch 2: all the config's losses, backward, clipping, AdamW; its time on this
   CPU and its FLOPs (`torch.utils.flop_counter.FlopCounterMode`, forward + backward).
4. Writes `docs/data/loader_vs_step.json` and the table between the markers in docs/data/real_datasets.md. A GPU
   step time there is an estimate: FLOPs / (peak x utilisation), for the utilisations stated.

    python benchmarks/loader_vs_step.py            # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import config_sha, git_commit, replace_block  # noqa: E402
from vlpkit.builder import build_e2evlp  # noqa: E402
from vlpkit.data.tokenization import save_tokenizer, train_wordpiece  # noqa: E402
from vlpkit.engine.optim import build_optimizer  # noqa: E402
from vlpkit.pretraining.data import PretrainingCollator, PretrainingDataset  # noqa: E402
from vlpkit.pretraining.objective import ObjectiveConfig, PretrainingObjective  # noqa: E402
from vlpkit.pretraining.run import build_data, image_transforms, load_config  # noqa: E402

CONFIG = ROOT / "vlpkit" / "configs" / "e2evlp-6-r50.yaml"
RESULT = ROOT / "docs" / "data" / "loader_vs_step.json"
DOCS = ROOT / "docs" / "data" / "real_datasets.md"
BEGIN, END = "<!-- loader-vs-step:begin -->", "<!-- loader-vs-step:end -->"
WIDTH, HEIGHT = 640, 384
# dense bf16 tensor-core peak of an H100 SXM (NVIDIA's datasheet, without sparsity), and the range of fractions of
# it assumed for the estimate. DETR's own report (300 epochs of COCO's 118k images in 3 days on 16 V100s, 86 GFLOPs
# forward at 800x1333) puts its training at about 28% of the V100's fp32 peak by this count; multi-scale batches
# of 2-4 images per GPU keep a bf16 run on an H100 lower
H100_BF16_PEAK = 989e12
UTILISATIONS = (0.05, 0.15)
VQA_ANSWERS, QUESTION_TOKENS = 3129, 20
# the paper's data: COCO train2014 images + Visual Genome images (an upper bound: `vlpkit data prepare` removes
# the VG images that are downstream evaluation images); VQA v2 train + val questions (for test-dev submissions)
PRETRAIN_IMAGES_PER_EPOCH = 82_783 + 108_077
VQA_QUESTIONS_PER_EPOCH = 443_757 + 214_354
VQA_EPOCHS = 12  # VQAConfig.epochs
PAPER_SIZES = dict(vocab_size=30_522, num_classes=1_600, num_attributes=400)  # BERT; bottom-up-attention vocabs
WORDS = ("a man woman dog cat red blue green small large table car street bus train pizza plate person sitting "
         "standing on in with next to the of near holding two three people riding bike field grass").split()


def photo_like(rng: np.random.Generator) -> Image.Image:
    """Smooth colour fields plus fine noise: JPEG size and decode cost close to a photograph's."""
    coarse = rng.uniform(0, 255, (HEIGHT // 32 + 1, WIDTH // 32 + 1, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.BICUBIC), dtype=np.float32)
    image += rng.normal(0, 18, image.shape)
    return Image.fromarray(image.clip(0, 255).astype(np.uint8))


def write_coco(folder: Path, n: int) -> dict:
    """A COCO-format set of `n` images; returns the data section that points at it."""
    rng, text_rng = np.random.default_rng(0), random.Random(0)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    images, annotations, captions = [], [], []
    for i in range(n):
        name = f"{i:012d}.jpg"
        photo_like(rng).save(images_dir / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": WIDTH, "height": HEIGHT})
        for k in range(5):
            w, h = rng.uniform(40, 200), rng.uniform(40, 200)
            x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(k % 80 + 1),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            captions.append({"id": len(captions) + 1, "image_id": i + 1,
                             "caption": " ".join(text_rng.choice(WORDS) for _ in range(text_rng.randint(8, 14)))})
    categories = [{"id": c + 1, "name": f"category {c + 1}", "supercategory": "thing"} for c in range(80)]
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))
    (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": captions}))
    save_tokenizer(train_wordpiece([c["caption"] for c in captions], vocab_size=500), folder / "tokenizer")
    return {"instances": str(folder / "instances.json"), "captions": str(folder / "captions.json"),
            "images": str(images_dir)}


def loader_rate(dataset, collator, batch: int, batches: int) -> float:
    """Images per second of dataset + collator in this process (what one DataLoader worker does)."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=collator, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        it = iter(loader)
        next(it)  # first batch: file-system caches
        start = time.perf_counter()
        count = sum(len(b) for b in itertools.islice(it, batches))
        return count / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def paper_model_size(preset: str) -> dict:
    """Parameters of the preset at the paper's vocabulary sizes, and one checkpoint's bytes (the weights in
    float32 plus AdamW's two moments per trained value, as `Trainer.checkpoint_bytes` counts)."""
    model = build_e2evlp(preset, backbone_weights=None, **PAPER_SIZES)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": sum(p.numel() for p in model.parameters()), "checkpoint_bytes": weights + 8 * trained}


def vqa_step_flops(model, data) -> int:
    """FLOPs of a VQA fine-tuning step's forward + backward on the same images: one encoder pass over a
    question of QUESTION_TOKENS tokens and the grid, and a linear answer head (no decoder)."""
    ids = torch.randint(5, model.config.vocab_size, (data.pixel_values.shape[0], QUESTION_TOKENS))
    head = torch.nn.Linear(model.config.d_model, VQA_ANSWERS)
    with FlopCounterMode(display=False) as counter:
        cls = model.encode(data.pixel_values, data.pixel_mask, ids).cls_state
        logits = head(cls)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(num_images: int, batches: int, rounds: int) -> dict:
    config = load_config(CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        coco = write_coco(folder, num_images)
        jpeg_kib = sum(p.stat().st_size for p in (folder / "images").iterdir()) / num_images / 1024
        data_cfg = {"kind": "files", "tokenizer": str(folder / "tokenizer"), "image": config["data"]["image"],
                    "sources": [{"name": "coco", "tasks": ["mlm", "itm", "detection", "caption"]}], "coco": coco}
        sources, tokenizer, overrides, _ = build_data(data_cfg)
        train_tf, eval_tf = image_transforms(data_cfg["image"])
        collator = PretrainingCollator(tokenizer, max_length=40, seed=0)
        batch = 2
        rates = {"recipe": [], "largest": []}
        for _ in range(rounds):
            rates["recipe"].append(loader_rate(PretrainingDataset(sources, train_tf, seed=0), collator, batch,
                                               batches))
            rates["largest"].append(loader_rate(PretrainingDataset(sources, eval_tf, seed=0), collator, batch,
                                                batches))

        torch.manual_seed(0)
        model = build_e2evlp(config["model"]["preset"], **{**overrides, "backbone_weights": None}).train()
        cfg = model.config
        objective_cfg = {k: v for k, v in config["objective"].items()}
        objective_cfg["tasks"] = [t for t in objective_cfg["tasks"] if t != "attributes"]  # COCO has none
        objective = PretrainingObjective(ObjectiveConfig.from_dict(objective_cfg), cfg.num_classes,
                                         cfg.num_attributes, cfg.pad_token_id)
        trainer = config["trainer"]
        optimizer = build_optimizer(model, trainer["lr"], trainer["backbone_lr"], trainer["weight_decay"])
        data = collator([PretrainingDataset(sources, eval_tf, seed=0)[i] for i in range(batch)])

        def step():
            optimizer.zero_grad(set_to_none=True)
            out = objective(model, data)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), trainer["clip_max_norm"])
            optimizer.step()
            return out

        with FlopCounterMode(display=False) as counter:
            step()  # also creates the optimizer state
        flops = counter.get_total_flops()
        vqa_flops = vqa_step_flops(model, data)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    gpu = {f"{u:.2f}": batch * H100_BF16_PEAK * u / flops for u in UTILISATIONS}  # images/s
    per_worker = float(np.median(rates["recipe"]))
    epochs = int(config["trainer"]["epochs"])

    def gpu_hours(work: float) -> dict:
        return {f"{u:.2f}": round(work / (H100_BF16_PEAK * u) / 3600, 1) for u in UTILISATIONS}

    return {
        "config": "vlpkit/configs/e2evlp-6-r50.yaml", "config_sha": config_sha(CONFIG.stem), "commit": git_commit(),
        "threads": torch.get_num_threads(), "image": [WIDTH, HEIGHT], "jpeg_kib": round(jpeg_kib, 1),
        "batch": batch, "step_size": list(data.pixel_values.shape[-2:]),
        "loader_images_per_s_per_worker": {k: round(float(np.median(v)), 2) for k, v in rates.items()},
        "step_s_cpu": round(step_s, 2), "step_images_per_s_cpu": round(batch / step_s, 3),
        "loader_over_step_cpu": round(per_worker / (batch / step_s), 1),
        "step_flops_per_image": flops / batch,
        "vqa_flops_per_question": vqa_flops / batch,
        "h100_bf16_peak": H100_BF16_PEAK,
        "h100_step_images_per_s_estimate": {k: round(v, 1) for k, v in gpu.items()},
        "h100_workers_needed_estimate": {k: math.ceil(v / per_worker) for k, v in gpu.items()},
        "pretraining": {"epochs": epochs, "images_per_epoch": PRETRAIN_IMAGES_PER_EPOCH,
                        "h100_hours_estimate": gpu_hours(epochs * PRETRAIN_IMAGES_PER_EPOCH * flops / batch)},
        "vqa_finetuning": {"epochs": VQA_EPOCHS, "questions_per_epoch": VQA_QUESTIONS_PER_EPOCH,
                           "h100_hours_estimate": gpu_hours(VQA_EPOCHS * VQA_QUESTIONS_PER_EPOCH * vqa_flops / batch)},
        "paper_model": paper_model_size(config["model"]["preset"]),
    }


def table(r: dict) -> str:
    lo, hi = (f"{u:.2f}" for u in UTILISATIONS)
    rec, big = r["loader_images_per_s_per_worker"]["recipe"], r["loader_images_per_s_per_worker"]["largest"]
    rows = [
        "| quantity | value |", "|---|---|",
        f"| loader, one worker, the config's transforms (scales 480-800, crop, flip) | {rec:.1f} images/s |",
        f"| loader, one worker, every image at 800x1333 | {big:.1f} images/s |",
        f"| step at {r['step_size'][0]}x{r['step_size'][1]}, batch {r['batch']}, this CPU ({r['threads']} threads) "
        f"| {r['step_s_cpu']:.1f} s ({r['step_images_per_s_cpu']:.2f} images/s) |",
        f"| loader / step on this CPU, one worker | {r['loader_over_step_cpu']:.1f}x |",
        f"| pretraining step FLOPs per image (forward + backward) | {r['step_flops_per_image'] / 1e12:.2f} TFLOP |",
        f"| VQA fine-tuning step FLOPs per question (forward + backward) | "
        f"{r['vqa_flops_per_question'] / 1e12:.2f} TFLOP |",
        f"| H100 step, estimate at {float(lo):.0%} / {float(hi):.0%} of the bf16 peak | "
        f"{r['h100_step_images_per_s_estimate'][lo]:.0f} / {r['h100_step_images_per_s_estimate'][hi]:.0f} images/s |",
        f"| workers to keep up with it, estimate | {r['h100_workers_needed_estimate'][lo]} / "
        f"{r['h100_workers_needed_estimate'][hi]} |",
    ]
    pre, vqa = r["pretraining"], r["vqa_finetuning"]
    rows += [
        f"| pretraining, {pre['epochs']} epochs of {pre['images_per_epoch']:,} images, H100 hours, estimate at "
        f"{float(lo):.0%} / {float(hi):.0%} | {pre['h100_hours_estimate'][lo]:,.0f} / "
        f"{pre['h100_hours_estimate'][hi]:,.0f} |",
        f"| VQA fine-tuning, {vqa['epochs']} epochs of {vqa['questions_per_epoch']:,} questions, H100 hours, estimate "
        f"| {vqa['h100_hours_estimate'][lo]:,.0f} / {vqa['h100_hours_estimate'][hi]:,.0f} |",
        f"| e2evlp-6-r50 at BERT's vocabulary and 1,600 / 400 classes | {r['paper_model']['parameters'] / 1e6:.1f}M "
        f"parameters, {r['paper_model']['checkpoint_bytes'] / 2**30:.2f} GiB per checkpoint |",
    ]
    note = (f"Produced by `python benchmarks/loader_vs_step.py` (config e2evlp-6-r50.yaml {r['config_sha']}, commit "
            f"{r['commit']}); stand-in JPEGs of {r['image'][0]}x{r['image'][1]}, {r['jpeg_kib']:.0f} KiB each.")
    return "\n".join(rows) + "\n\n" + note


def write_docs(r: dict) -> None:
    replace_block(DOCS, BEGIN, END, table(r))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    result = measure(args.images, args.batches, args.rounds)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    write_docs(result)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
