"""`vlpkit demo` (what `make demo` runs): warm up the trunk on object classes and attributes (the config's
`warmup` section), pretrain e2evlp-tiny on the shapes world with all four objectives, evaluate every objective
on held-out images beside its trivial baseline, save a figure and the checkpoint."""

from __future__ import annotations

import json
import time

from PIL import Image


def run_demo(config: str = "e2evlp-tiny", overrides: list[str] | None = None, max_eval_images: int | None = None,
             figure_images: int = 8) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    from .data.masking import visual_word_ids
    from .data.shapes.language import VISUAL_WORDS
    from .pretraining.evaluate import evaluate_pretrained, format_table
    from .pretraining.run import image_transforms, load_config, pretrain
    from .pretraining.trunk_warmup import with_warm_trunk
    from .viz import prediction_grid

    start = time.perf_counter()
    cfg = load_config(config, overrides)
    # the trunk warm-up (cached) is the offline stand-in for the paper's ImageNet trunk
    cfg = with_warm_trunk(cfg, progress=cfg["trainer"].get("progress_bar", True))
    print(f"vlpkit demo: pretraining {cfg['model'].get('preset')} on the shapes world "
          f"({cfg['trainer'].get('max_steps')} steps); output in {cfg['trainer'].get('output_dir')}", flush=True)
    # a second run continues (or, when finished, re-evaluates) the run already in output_dir; delete the folder to
    # start over
    from .engine.state import CheckpointManager

    resume = CheckpointManager(cfg["trainer"].get("output_dir", "runs/demo")).latest() is not None
    if resume:
        print(f"continuing the run in {cfg['trainer'].get('output_dir')} (delete it to start over)", flush=True)
    result = pretrain(cfg, resume=resume)
    train_seconds = time.perf_counter() - start
    world, tokenizer, model = result.setup.world, result.tokenizer, result.model
    _, eval_tf = image_transforms(cfg["data"].get("image", {}))
    train_captions = [a["caption"] for a in json.loads(world.captions("train").read_text())["annotations"]]
    print("evaluating on the val split ...", flush=True)
    visual_ids = visual_word_ids(tokenizer, VISUAL_WORDS)
    report = evaluate_pretrained(model, tokenizer, world.instances("val"), world.captions("val"),
                                 world.image_dir("val"), eval_tf, train_captions, max_images=max_eval_images,
                                 visual_ids=visual_ids)
    table = format_table(report["metrics"])
    total = time.perf_counter() - start
    print(table)
    print(f"best constant caption: {report['constant_caption']!r}")
    out = result.output_dir
    ids = report["image_ids"][:figure_images]
    coco = json.loads(world.instances("val").read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    images = [Image.open(world.image_dir("val") / files[i]).convert("RGB") for i in ids]
    shown = ("detection AP50", "caption CIDEr", "ITM accuracy", "ITM ranking", "MLM accuracy", "grounding probe")
    parts = [f"{k} {report['metrics'][k][0]:.2f} (baseline {report['metrics'][k][1]:.2f})"
             for k in shown if k in report["metrics"]]
    title = "\n".join("   ".join(parts[i:i + 3]) for i in range(0, len(parts), 3))
    fig = prediction_grid(images, [report["predictions"][i] for i in ids], result.setup.object_vocab.tokens,
                          result.setup.attribute_vocab.tokens, title=title)
    fig.savefig(out / "demo_predictions.png", dpi=110)
    summary = {"metrics": {k: {"model": v, "baseline": b} for k, (v, b) in report["metrics"].items()},
               "train_seconds": train_seconds, "total_seconds": total,
               "constant_caption": report["constant_caption"],
               "grounding_probe": {"right_image": report["probe"].right, "other_image": report["probe"].wrong,
                                   "rows": report["probe"].rows}}
    (out / "demo_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"figure: {out / 'demo_predictions.png'}\nmetrics: {out / 'demo_metrics.json'}\nmodel: {out / 'model'}\n"
          f"wall time {total:.0f}s\n"
          f"on your own image: .venv/bin/vlpkit predict --model {out} --caption --detect YOUR_IMAGE.jpg")
    return summary


def main(argv=None) -> int:
    run_demo()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
