"""Command line: `vlpkit demo`, `vlpkit pretrain`, `vlpkit finetune`, `vlpkit evaluate`, `vlpkit smoke`,
`vlpkit params`."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.config, args.set, max_eval_images=args.max_eval_images)
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from .pretraining.run import load_config, pretrain
    from .pretraining.trunk_warmup import with_warm_trunk

    config = load_config(args.config, args.set)
    # the config's trunk warm-up (cached, so a resumed run finds the same file), then pretraining
    pretrain(with_warm_trunk(config, progress=config["trainer"].get("progress_bar", True)), resume=args.resume)
    return 0


def _parse_value(text: str):
    """A `--set` value as YAML 1.2 (`1e-3` is a float, `no` a string; vlpkit.yamlio)."""
    from .yamlio import load_yaml

    return load_yaml(text, f"--set value {text!r}")


def _split_overrides(items: list[str]) -> tuple[dict, dict]:
    """`task.key=value` / `trainer.key=value` -> (task dict, trainer dict); values parsed by `_parse_value`."""
    task, trainer = {}, {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot or section not in ("task", "trainer"):
            raise SystemExit(f"--set {item!r}: expected task.KEY=VALUE or trainer.KEY=VALUE")
        (task if section == "task" else trainer)[field] = _parse_value(value)
    return task, trainer


def _task_data(data: str, shapes_images: int, nlvr2_sets: int | None = None):
    """'shapes' -> a generated shapes world of `shapes_images` images (and `nlvr2_sets` NLVR2 sets; None: the
    world's default, shapes_images // 16); a YAML/JSON file or a folder (a COCO root, for detection) -> its path
    (each task reads a data file's relative paths from the file's folder)."""
    from pathlib import Path

    if data == "shapes":
        from .data.shapes.setup import prepare_shapes

        options = {} if nlvr2_sets is None else {"nlvr2_sets": nlvr2_sets}
        return prepare_shapes(num_images=shapes_images, **options)
    if nlvr2_sets is not None:
        raise SystemExit(f"--shapes-nlvr2-sets applies to --data shapes only (got --data {data!r})")
    path = Path(data)
    if path.is_dir():
        return str(path)
    if not path.is_file():
        raise SystemExit(f"--data {data!r}: expected 'shapes', a YAML/JSON file of dataset paths or a dataset "
                         "folder (a COCO root for detection)")
    return path


def _checkpoint(path: str | None):
    """A pretraining run folder (with model/) or a save_pretrained folder; None: a fresh model."""
    from pathlib import Path

    if path is None:
        return None
    p = Path(path)
    return p / "model" if (p / "model" / "config.json").is_file() else p


def metrics_table(metrics, title: str | None = None) -> str:
    """A two-column text table of the numbers in `metrics` (other entries, e.g. file paths, are left out)."""
    import numbers

    rows = [(str(k), f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in metrics.items()
            if isinstance(v, numbers.Number) and not isinstance(v, bool)]
    width = max([len("metric")] + [len(k) for k, _ in rows])
    value_width = max([len("value")] + [len(v) for _, v in rows])
    lines = [title] if title else []
    lines += [f"{'metric':<{width}}  {'value':>{value_width}}", f"{'-' * width}  {'-' * value_width}"]
    lines += [f"{k:<{width}}  {v:>{value_width}}" for k, v in rows]
    return "\n".join(lines)


def _finetune(args: argparse.Namespace) -> int:
    import json

    from .tasks import finetune

    task_overrides, trainer_overrides = _split_overrides(args.set)
    data = _task_data(args.data, args.shapes_images, args.shapes_nlvr2_sets)
    result = finetune(args.task, _checkpoint(args.checkpoint), data, args.output, config=task_overrides,
                      trainer_overrides=trainer_overrides, resume=args.resume)
    print(json.dumps(result.metrics, indent=2, default=str))
    for split, metrics in result.metrics.items():
        print(metrics_table(metrics, f"{args.task} {split}"))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .tasks import evaluate

    task_overrides, trainer_overrides = _split_overrides(args.set)
    if trainer_overrides:
        raise SystemExit(f"--set trainer.*: evaluate trains nothing (got {sorted(trainer_overrides)})")
    output = Path(args.output) if args.output else Path(args.model) / "evaluation"
    metrics = evaluate(args.task, args.model, _task_data(args.data, args.shapes_images, args.shapes_nlvr2_sets),
                       args.split, output,
                       task_overrides, device=args.device)
    print(metrics_table(metrics, f"{args.task} {metrics['split']} ({args.model})"))
    files = [v for k, v in metrics.items() if k.endswith("_file")]
    print(f"results in {output}" + (f": {', '.join(files)}" if files else ""))
    return 0


def _smoke(args: argparse.Namespace) -> int:
    import torch

    from . import build_e2evlp

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = build_e2evlp(args.preset).eval()
    cfg = model.config
    pixels = torch.rand(1, 3, args.height, args.width)
    ids = torch.tensor([[cfg.cls_token_id, 10, 11, 12, cfg.sep_token_id]])
    with torch.inference_mode():
        out = model(pixels, input_ids=ids)
        captions = model.caption_logits(model.encode(pixels), ids[:, :-1])
    print(f"{args.preset}: {model.num_parameters() / 1e6:.2f}M parameters")
    rows = [("memory", out.encoder.memory), ("pred_logits", out.detection.pred_logits),
            ("pred_boxes", out.detection.pred_boxes), ("pred_attributes", out.detection.pred_attributes),
            ("mlm_logits", out.mlm_logits), ("itm_logits", out.itm_logits), ("caption_logits", captions)]
    for name, tensor in rows:
        if tensor is not None:
            print(f"  {name:<16} {list(tensor.shape)}")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import yaml

    from .data.prepare import prepare_pretraining_data
    from .pretraining.run import load_config
    from .pretraining.schema import validate_config

    vg = args.vg
    report = prepare_pretraining_data(
        args.out, args.coco_instances, args.coco_captions, args.coco_images,
        *((f"{vg}/image_data.json", f"{vg}/objects.json", f"{vg}/attributes.json",
           f"{vg}/region_descriptions.json" if Path(f"{vg}/region_descriptions.json").is_file() else None,
           args.vg_images or vg) if vg else (None,) * 5),
        tokenizer=args.tokenizer, vocab_size=args.vocab_size, exclude=args.exclude)
    out = Path(args.out)
    config = load_config(args.config)
    data = json.loads((out / "data.yaml").read_text())
    config["data"] = {**data, "image": config.get("data", {}).get("image", {})}
    validate_config(config)
    (out / "pretrain.yaml").write_text(f"# {args.config} with the data prepared by `vlpkit data prepare`\n"
                                       + yaml.safe_dump(config, sort_keys=False))
    print(json.dumps({k: v for k, v in report.items() if k != "coco_categories"}, indent=1))
    print(f"wrote {out / 'pretrain.yaml'} (report: {out / 'prepare_report.json'}); next:\n"
          f"  vlpkit pretrain --config {out / 'pretrain.yaml'} --set trainer.output_dir=runs/pretrain")
    return 0


def _params(args: argparse.Namespace) -> int:
    from .params import parameter_table

    print(parameter_table())
    return 0


def _predict(args: argparse.Namespace) -> int:
    import json

    from .predict import PredictError, format_predictions, predict_files

    try:
        results = predict_files(args.model, args.images, caption=args.caption or not (
            args.question or args.detect or args.match), question=args.question, detect=args.detect,
            text=args.text, match=args.match, threshold=args.threshold, num_beams=args.beams, device=args.device)
    except (PredictError, FileNotFoundError) as err:
        print(f"vlpkit predict: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=1) if args.json else format_predictions(results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .tasks.registry import task_names  # the registered tasks (listing them imports no task module)

    tasks = task_names()
    parser = argparse.ArgumentParser(prog="vlpkit", description="E2E-VLP reference implementation")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="pretrain e2evlp-tiny on the shapes world and evaluate it (make demo)")
    demo.add_argument("--config", default="e2evlp-tiny", help="a shipped config name or a YAML/JSON path")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value, e.g. --set trainer.max_steps=50")
    demo.add_argument("--max-eval-images", type=int, default=None)
    demo.set_defaults(func=_demo)
    pre = sub.add_parser("pretrain", help="pretrain E2E-VLP from a config")
    pre.add_argument("--config", required=True, help="a shipped config name (e2evlp-6-r50, ...) or a path")
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    pre.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    pre.set_defaults(func=_pretrain)
    fin = sub.add_parser("finetune", help="fine-tune a pretrained model on a downstream task and evaluate it")
    fin.add_argument("task", choices=tasks)
    fin.add_argument("--checkpoint", default=None, help="pretraining run or model folder (default: fresh model)")
    fin.add_argument("--data", default="shapes", help="'shapes', a YAML/JSON file of dataset paths or a COCO root")
    fin.add_argument("--shapes-images", type=int, default=2000, help="size of the generated shapes world")
    fin.add_argument("--shapes-nlvr2-sets", type=int, default=None,
                     help="NLVR2 sets of 8 images in the generated world (default: shapes-images // 16); 1000 "
                          "gives 6,400 training statements, which NLVR2 needs to rise above chance")
    fin.add_argument("--output", required=True, help="output folder (model, metrics, results files)")
    fin.add_argument("--set", action="append", default=[], metavar="task.KEY=VALUE|trainer.KEY=VALUE",
                     help="change the task recipe (task.train_scales=[128]) or its trainer for this run "
                          "(trainer.lr=1e-4, trainer.max_steps=3000)")
    fin.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    fin.set_defaults(func=_finetune)
    ev = sub.add_parser("evaluate", help="evaluate a fine-tuned task model on one split with the official metric")
    ev.add_argument("task", choices=tasks)
    ev.add_argument("--model", required=True, help="the output folder of `vlpkit finetune` (or its model/)")
    ev.add_argument("--data", default="shapes", help="'shapes', a YAML/JSON file of dataset paths or a COCO root")
    ev.add_argument("--shapes-images", type=int, default=2000, help="size of the generated shapes world")
    ev.add_argument("--shapes-nlvr2-sets", type=int, default=None,
                    help="NLVR2 sets of the generated world (as for finetune)")
    ev.add_argument("--split", default=None,
                    help="evaluation split (default: vqa val, nlvr2 dev, caption/retrieval test, detection val)")
    ev.add_argument("--output", default=None,
                    help="folder for the official results file and evaluation_<split>.json (default: MODEL/evaluation)")
    ev.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA when available)")
    ev.add_argument("--set", action="append", default=[], metavar="task.KEY=VALUE",
                    help="change a field of the recorded recipe, e.g. task.eval_batch_size=8")
    ev.set_defaults(func=_evaluate)
    pred = sub.add_parser("predict", help="caption, question, detect or match your own image files with a saved "
                                          "model (default: --caption)")
    pred.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    pred.add_argument("--model", required=True,
                      help="a run folder (vlpkit demo / pretrain) or a fine-tuned task folder (vlpkit finetune)")
    pred.add_argument("--caption", action="store_true", help="describe each image (beam search)")
    pred.add_argument("--question", default=None, help="answer this question about each image (a VQA folder)")
    pred.add_argument("--detect", action="store_true", help="list the objects found, with their attributes")
    pred.add_argument("--text", default=None, help="with --detect: a text the encoder reads beside the image")
    pred.add_argument("--match", action="append", default=[], metavar="CAPTION",
                      help="score how well a caption describes each image (repeat for several)")
    pred.add_argument("--threshold", type=float, default=0.5, help="with --detect: the lowest score shown")
    pred.add_argument("--beams", type=int, default=4, help="with --caption: beam size")
    pred.add_argument("--device", default=None, help="cuda, cpu, ... (default: the CPU)")
    pred.add_argument("--json", action="store_true", help="print JSON instead of text")
    pred.set_defaults(func=_predict)
    smoke = sub.add_parser("smoke", help="build a model and run one forward pass on a random image")
    smoke.add_argument("--preset", default="e2evlp-tiny")
    smoke.add_argument("--height", type=int, default=128)
    smoke.add_argument("--width", type=int, default=160)
    smoke.add_argument("--seed", type=int, default=0)
    smoke.set_defaults(func=_smoke)
    data = sub.add_parser("data", help="prepare the official dataset files for pretraining (offline)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="tokenizer, VG vocabularies, COCO->VG class mapping, filtered files")
    prep.add_argument("--coco-instances", required=True, help="instances_train2014.json")
    prep.add_argument("--coco-captions", required=True, help="captions_train2014.json")
    prep.add_argument("--coco-images", required=True, help="the train2014/ image folder")
    prep.add_argument("--vg", default=None, help="folder with image_data.json, objects.json, attributes.json "
                                                   "(and region_descriptions.json)")
    prep.add_argument("--vg-images", default=None, help="Visual Genome image root (default: --vg)")
    prep.add_argument("--tokenizer", default=None,
                      help="a BERT vocabulary folder; default: train WordPiece on the pretraining texts")
    prep.add_argument("--vocab-size", type=int, default=30522, help="WordPiece size when training one")
    prep.add_argument("--exclude", action="append", default=[], metavar="FILE",
                      help="a downstream val/test file (COCO instances/captions, Karpathy, VQA questions) whose "
                           "COCO images are removed from Visual Genome; repeat for each")
    prep.add_argument("--config", default="e2evlp-6-r50", help="the shipped config pretrain.yaml starts from")
    prep.add_argument("--out", required=True, help="output folder")
    prep.set_defaults(func=_data_prepare)
    params = sub.add_parser("params", help="parameter counts of every preset beside the paper's Table 5")
    params.set_defaults(func=_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command. The errors a user can fix (a bad config, a locked, full or damaged run folder, a run folder
    that would be overwritten) are printed as one line, without a traceback, with exit status 2."""
    from .checkpoint import CheckpointMismatchError, CorruptFileError
    from .config import ConfigError
    from .engine.run_dir import RunDirError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RunDirError, CorruptFileError, CheckpointMismatchError, FileExistsError) as err:
        print(f"vlpkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
