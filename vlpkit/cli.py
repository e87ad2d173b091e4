"""Command line: `vlpkit demo`, `vlpkit info`, `vlpkit params`."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
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
    demo = sub.add_parser("demo", help="build a model and run it on a generated image")
    demo.add_argument("--preset", default="e2evlp-tiny")
    demo.add_argument("--height", type=int, default=128)
    demo.add_argument("--width", type=int, default=160)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    params = sub.add_parser("params", help="parameter counts of every preset beside the paper's Table 5")
    params.set_defaults(func=_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
