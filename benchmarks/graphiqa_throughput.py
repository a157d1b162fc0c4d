"""GraphIQA speed: pretraining images/s against the backbone-only ceiling, and scoring images/s.

    python benchmarks/graphiqa_throughput.py                      # the released sizes (32-crop graphs, 25 crops)
    python benchmarks/graphiqa_throughput.py --batch 8 --crops 5  # a quick look on a small CPU
    python benchmarks/graphiqa_throughput.py --crop-size 64 --image-size 96   # smaller crops, same code

Random weights throughout (speed does not depend on them; nothing is downloaded):

- ceiling: one ResNet-50 forward (no autograd) over a batch of ``--batch`` crops (224x224), the least
  any pretraining step over that many crops must cost per graph;
- pretraining: one full step (anchor graph with gradients, positive and negative graphs without,
  the triplet + level loss, backward, Adam), i.e. 3 x ``--batch`` crops per step;
- scoring: GraphIQAScorer on ``--image-size`` (256) square images with ``--crops`` crops each (one graph
  per image).

benchmarks/graphiqa_learning.py measures the real pipeline (cache reads, cropping, the loop) instead.

Prints one JSON document: crops/s of each (pretraining counts the anchor, positive and negative
crops), and the pretraining rate as a fraction of the ceiling: every crop needs one backbone pass,
so 1 is the best a step could reach and 1 - fraction is what the graph layers, the loss and the
optimiser add.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    from iqa_cli.losses.graphiqa import pretrain_objective
    from iqa_cli.models.graphiqa import GraphIQA, GraphIQAConfig, GraphIQAScorer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="crops per pretraining graph")
    parser.add_argument("--crops", type=int, default=25, help="crops per scored image")
    parser.add_argument("--images", type=int, default=4, help="images per scoring call")
    parser.add_argument("--embed-size", type=int, default=64)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--image-size", type=int, default=256, help="side of the scored images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    model = GraphIQA(GraphIQAConfig(embed_size=args.embed_size, crop_size=args.crop_size)).to(device)
    g = torch.Generator().manual_seed(0)
    crops = [torch.rand(args.batch, 3, args.crop_size, args.crop_size, generator=g).to(device) for _ in range(3)]
    levels = torch.randint(1, 6, (args.batch,), generator=g).float().to(device)

    def backbone_only():
        with torch.no_grad():
            model.backbone(crops[0])

    model.train()
    optimiser = torch.optim.Adam(model.stage_parameters("pretrain"), lr=1e-5)

    def pretrain_step():
        optimiser.zero_grad(set_to_none=True)
        pretrain_objective(model, *crops, levels).total.backward()
        optimiser.step()

    scorer = GraphIQAScorer(model, crops=args.crops)
    images = torch.rand(args.images, 3, args.image_size, args.image_size, generator=g).to(device)

    def score():
        with torch.no_grad():
            scorer(images)

    ceiling = args.batch / timed(backbone_only, args.repeats)
    pretrain = 3 * args.batch / timed(pretrain_step, args.repeats)
    scoring = args.images / timed(score, args.repeats)
    print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "batch": args.batch,
                      "embed_size": args.embed_size, "crop_size": args.crop_size,
                      "backbone_crops_per_s": round(ceiling, 2),
                      "pretrain_crops_per_s": round(pretrain, 2), "pretrain_fraction_of_ceiling": round(
                          pretrain / ceiling, 3), "scoring_images_per_s": round(scoring, 3),
                      "scoring_crops_per_s": round(scoring * args.crops, 2)}, indent=1))


if __name__ == "__main__":
    main()
