"""Command line: `vlpkit demo`, `vlpkit pretrain`, `vlpkit smoke`, `vlpkit params`."""

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

    pretrain(load_config(args.config, args.set), resume=args.resume)
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


def _params(args: argparse.Namespace) -> int:
    from .params import parameter_table

    print(parameter_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
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
    smoke = sub.add_parser("smoke", help="build a model and run one forward pass on a random image")
    smoke.add_argument("--preset", default="e2evlp-tiny")
    smoke.add_argument("--height", type=int, default=128)
    smoke.add_argument("--width", type=int, default=160)
    smoke.add_argument("--seed", type=int, default=0)
    smoke.set_defaults(func=_smoke)
    params = sub.add_parser("params", help="parameter counts of every preset beside the paper's Table 5")
    params.set_defaults(func=_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
