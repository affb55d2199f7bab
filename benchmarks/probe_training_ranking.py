"""What SD-MAD's training loss improves on the demo, epoch by epoch: Eq. 8 decisions, not Eq. 7 category rankings.

The loss of Eq. 3-5 compares, for each image, its distances to the prompts and to the anchor (attract the positive
prompts; positives nearer than the anchor, negatives farther). The category AUROC of the paper's third protocol ranks
*images* by their Eq. 7 score for one category, which no term of the loss compares. This script trains the bundle's
demo (``configs/train.json`` as it is: its splits, network, augmentation, loss and optimiser, built from the config)
and after each epoch measures, with the adapters as trained:

- on the k-shot **support set itself** (the training images without augmentation) and on the **test split**: the
  mean category AUROC of Eq. 7 (sign selection off, so the set of prompts stays fixed), the Hamming score and the
  subset accuracy of Eq. 8;
- the geometry on the test split: the mean cosine between different images' embeddings and between images and
  prompts (Eq. 3 pulls every image towards its category's prompts, which share a large common direction; if the
  images close up on each other as they approach the prompts, the differences the category ranking needs shrink);
- the epoch's training loss.

If the loss falls while the support set's own category AUROC falls, the training step is not optimising what that
metric measures, whatever the backbone: a fit of the support set by the paper's loss does not order the images of a
category above the others. Eq. 8's Hamming score, which the loss does address, should rise meanwhile.

Run: ``python benchmarks/probe_training_ranking.py --seeds 0 1`` (about 30 s per seed on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchutil as bu  # noqa: E402

NAME = "probe_training_ranking"
ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="train.json seeds (k-shot draws)")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    bu.add_output_argument(parser)
    parser.add_argument("--smoke", action="store_true", help="24 volumes, 1-shot, 2 epochs, random backbone")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}.")
    return args


def _metrics(net: Any, images: Any, labels: Any) -> dict[str, Any]:
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    from sdmad_monai.metrics.multilabel_accuracy import compute_hamming_score, compute_subset_accuracy

    net.eval()
    selection, net.sign_selection = net.sign_selection, False
    try:
        with torch.no_grad():
            out = net(images, output="all", maps=False)
    finally:
        net.sign_selection = selection
    scores, y = out["scores"].numpy(), labels.numpy()
    image = torch.nn.functional.normalize(out["image_features"], dim=-1)
    text = torch.nn.functional.normalize(out["text_features"], dim=-1)
    pairs = ~torch.eye(len(image), dtype=torch.bool)
    per_category = [
        float(roc_auc_score(y[:, k], scores[:, k])) if 0 < y[:, k].sum() < len(y) else float("nan")
        for k in range(y.shape[1])
    ]
    return {
        "category_auroc": float(np.nanmean(per_category)),
        "category_auroc_per_category": per_category,
        "hamming": float(compute_hamming_score(out["predictions"], labels).mean()),
        "subset_accuracy": float(compute_subset_accuracy(out["predictions"], labels).mean()),
        # the geometry: do the images stay apart from each other while they move towards the prompts?
        "image_image_cosine": float((image @ image.T)[pairs].mean()),
        "image_prompt_cosine": float((image @ text.T).mean()),
    }


def _stack(items: list, transform: Any) -> tuple[Any, Any]:
    import torch

    data = [transform(dict(item)) for item in items]
    return torch.stack([torch.as_tensor(d["image"]) for d in data]), torch.stack(
        [torch.as_tensor(d["label"]) for d in data]
    )


def build_demo_training(
    seed: int, work: Path, smoke: bool, overrides: dict[str, Any] | None = None
) -> tuple[Any, dict, Any, Any, Any, Any]:
    """The bundle's demo training objects from ``configs/train.json`` as it is (plus ``overrides``), seeded as the
    bundle seeds them: network, splits, training loader, loss, optimiser and the validation preprocessing."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser.update({"bundle_root": str(work), "seed": seed, **(overrides or {})})
    if smoke:
        parser.update({"demo_volumes": 24, "k_shot": 1, "pretrained": None})
    set_determinism(seed=seed)
    net = parser.get_parsed_content("network_def")
    splits = parser.get_parsed_content("splits")
    return (
        net,
        splits,
        parser.get_parsed_content("train#dataloader"),
        parser.get_parsed_content("loss"),
        parser.get_parsed_content("optimizer"),
        parser.get_parsed_content("validate#preprocessing"),
    )


def train_one_seed(seed: int, epochs: int, work: Path, smoke: bool) -> dict[str, Any]:
    net, splits, loader, loss_fn, optimiser, evaluate = build_demo_training(seed, work, smoke)
    support = _stack(splits["training"], evaluate)
    test = _stack(splits["test"], evaluate)
    neg = float((test[1] == 0).float().mean())
    normal = float((test[1].sum(1) == 0).float().mean())
    history = [{"epoch": 0, "loss": None, "support": _metrics(net, *support), "test": _metrics(net, *test)}]
    for epoch in range(1, epochs + 1):
        net.train()
        total = 0.0
        for batch in loader:
            loss = loss_fn(net(batch["image"], output="all", maps=False), batch["label"])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach())
        row = {"epoch": epoch, "loss": total / max(1, len(loader)), "support": _metrics(net, *support),
               "test": _metrics(net, *test)}  # fmt: skip
        history.append(row)
        print(
            f"seed {seed} epoch {epoch:3d}  loss {row['loss']:.3f} | support: category AUROC "
            f"{row['support']['category_auroc']:.3f} Hamming {row['support']['hamming']:.3f} | test: category AUROC "
            f"{row['test']['category_auroc']:.3f} Hamming {row['test']['hamming']:.3f} "
            f"subset {row['test']['subset_accuracy']:.3f} | test cosines: image-image "
            f"{row['test']['image_image_cosine']:.3f} image-prompt {row['test']['image_prompt_cosine']:.3f}",
            flush=True,
        )
    return {
        "seed": seed,
        "support_slices": int(len(support[1])),
        "test_slices": int(len(test[1])),
        "test_all_negative": {"hamming": neg, "subset_accuracy": normal},
        "history": history,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import warnings

    args = parse_args(argv)
    bu.set_threads(args.threads)
    warnings.filterwarnings("ignore", "Sign selection kept no prompt")
    epochs = 2 if args.smoke else args.epochs
    seeds = args.seeds[:1] if args.smoke else args.seeds
    runs = []
    with tempfile.TemporaryDirectory(prefix="sdmad_probe_ranking_") as temporary:
        for seed in seeds:
            runs.append(train_one_seed(seed, epochs, Path(temporary) / f"seed{seed}", args.smoke))
    summary = []
    for run in runs:
        first, last = run["history"][0], run["history"][-1]
        summary.append({
            "seed": run["seed"],
            "loss_first_epoch": run["history"][1]["loss"],
            "loss_last_epoch": last["loss"],
            **{f"{split}_{metric}_{when}": row[split][metric]
               for split in ("support", "test")
               for metric in ("category_auroc", "hamming", "image_image_cosine", "image_prompt_cosine")
               for when, row in (("before", first), ("after", last))},
            "test_all_negative_hamming": run["test_all_negative"]["hamming"],
        })  # fmt: skip
    result = {
        "benchmark": NAME,
        "command": bu.command_line(argv),
        "machine": bu.machine_info(),
        "settings": {"config": "configs/train.json", "seeds": seeds, "epochs": epochs, "smoke": args.smoke},
        "summary": summary,
        "runs": runs,
    }
    return bu.finish(NAME, result, args.smoke, args.output)


if __name__ == "__main__":
    main()
