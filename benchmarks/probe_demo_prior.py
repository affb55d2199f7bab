"""How much room the demo backbone leaves the few-shot step: zero-shot prompts vs a linear probe on frozen features.

SD-MAD's few-shot step can only show a gain where the backbone's zero-shot prompt scores fall short of what its frozen
image features hold. This script measures both on the demo dataset's slices 0, 5 and 10 (the volumes
:func:`sdmad_monai.data.generate_demo_dataset` writes for ``--demo-seed``, rendered in memory):

- **zero-shot**: per category, the AUROC of the Eq. 7 score of the prompt bank with the adapters off, with all
  prompts (the ``clip`` variant of the evaluation) and with sign selection (Eq. 6);
- **probe**: per category, the AUROC of a logistic regression on the frozen, standardised image embedding,
  cross-validated by volume (``StratifiedGroupKFold``: the slices of one subject are never split between training
  and held-out folds), so it uses far more labelled slices than the k-shot step ever sees: an estimate of what the
  frozen features hold, not a target;
- **headroom** = probe - zero-shot (all prompts), per category and on the mean;
- **k-shot probe** (``--k-shot``, ``--k-shot-seeds``): the same logistic regression fitted on the bundle's k-shot
  support set only (``prepare_splits``, seeded draws), tested on its test split beside zero-shot on the same slices:
  whether what the few-shot step sees can beat the prompts at all.

Each backbone in ``--pretrained`` is measured side by side (default: the demo weights and the random
initialisation, ``none``). A backbone whose zero-shot mean is already at its probe's mean leaves the adapters
nothing to show on this data; the per-category figures say where the room is. Rebuild a candidate demo backbone into
the package's weights folder and run this (about a minute) before spending a sweep on it.

Run: ``python benchmarks/probe_demo_prior.py`` (about 1 minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _benchutil as bu  # noqa: E402

NAME = "probe_demo_prior"
SLICES = (0, 5, 10)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", nargs="+", default=["demo", "none"], help="backbones: 'demo', 'none' (random)")
    parser.add_argument("--volumes", type=int, default=120, help="demo volumes (the bundle's demo_volumes)")
    parser.add_argument("--demo-seed", type=int, default=0, help="the bundle's demo_seed")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--probe-c", type=float, default=0.1, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--threads", type=int, default=None)
    bu.add_output_argument(parser)
    parser.add_argument("--k-shot", type=int, default=4, help="support set size of the k-shot probe (train.json's)")
    parser.add_argument(
        "--k-shot-seeds",
        type=int,
        nargs="*",
        default=[0, 1, 2],
        help="seeds (k-shot draws) of the k-shot probe; none to skip it",
    )
    parser.add_argument("--work-dir", default=None, help="where the demo splits are written (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="24 volumes, 3 folds, random backbone only")
    args = parser.parse_args(argv)
    if args.volumes < 7:
        parser.error(f"--volumes must be at least 7 (six categories and normals), got {args.volumes}.")
    if args.folds < 2:
        parser.error(f"--folds must be at least 2, got {args.folds}.")
    if args.smoke:
        args.pretrained, args.volumes, args.folds, args.k_shot, args.k_shot_seeds = ["none"], 24, 3, 1, [0]
    return args


def demo_slices(num_volumes: int, demo_seed: int) -> tuple[Any, Any, Any]:
    """The demo dataset's slices 0/5/10 as CLIP inputs ``[N, 3, 64, 64]``, labels ``[N, K]``, volume ids ``[N]``.

    Same random streams as :func:`sdmad_monai.data.generate_demo_dataset` (``default_rng(seed)`` for the category
    assignment, ``default_rng([seed, i])`` per volume), rendered in memory.
    """
    import numpy as np
    import torch

    from sdmad_monai.data.demo import assign_categories, load_template, render_volume
    from sdmad_monai.data.report_corpus import slice_labels_from_rows, volume_slices_for_clip

    template, affine = load_template()
    assignment = assign_categories(num_volumes, np.random.default_rng(demo_seed))
    images, labels, volumes = [], [], []
    for index, categories in enumerate(assignment):
        data, rows = render_volume(template, affine, categories, np.random.default_rng([demo_seed, index]))
        slices = volume_slices_for_clip(data)
        slice_labels = torch.from_numpy(slice_labels_from_rows(rows, len(slices)))
        for z in SLICES:
            images.append(slices[z])
            labels.append(slice_labels[z])
            volumes.append(index)
    return torch.stack(images), torch.stack(labels), np.asarray(volumes)


def probe_auroc(features: Any, labels: Any, groups: Any, folds: int, c: float) -> list[float]:
    """Per category, the AUROC of out-of-fold logistic-regression scores (folds grouped by volume); NaN where a
    category has fewer positive volumes than folds."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    out = []
    for k in range(labels.shape[1]):
        y = labels[:, k]
        if len(np.unique(groups[y == 1])) < folds or len(np.unique(groups[y == 0])) < folds:
            out.append(float("nan"))
            continue
        scores = np.zeros(len(y))
        for train, held in StratifiedGroupKFold(folds, shuffle=True, random_state=0).split(features, y, groups):
            model = LogisticRegression(C=c, max_iter=2000).fit(features[train], y[train])
            scores[held] = model.decision_function(features[held])
        out.append(float(roc_auc_score(y, scores)))
    return out


def measure(pretrained: str, images: Any, labels: Any, volumes: Any, folds: int, c: float) -> dict[str, Any]:
    """Zero-shot (all prompts, sign selection) and probe AUROCs of one backbone."""
    import numpy as np
    import torch

    from sdmad_monai.data import FASTMRI_BRAIN_CATEGORIES
    from sdmad_monai.metrics import compute_auroc
    from sdmad_monai.networks import SignDrivenDetector

    detector = SignDrivenDetector(
        prompt_bank="fastmri_brain",
        categories=FASTMRI_BRAIN_CATEGORIES,
        model_name="sdmad-tiny",
        pretrained=None if pretrained == "none" else pretrained,
        image_size=64,
        image_adapter_layers=[2, 3, 5, 6],
        map_layers=[],
    ).eval()
    y = labels.numpy()
    result: dict[str, Any] = {"pretrained": pretrained}
    with torch.no_grad(), detector.adapters_disabled():
        features = detector.encode_image(images)
        text = detector.text_state()
        for variant, keep in (
            ("zero_shot_all_prompts", torch.ones_like(text.keep)),
            ("zero_shot_sign_selection", text.keep),
        ):
            scores = detector.score(features, text._replace(keep=keep), output="scores")
            result[variant] = [float(v) for v in compute_auroc(scores, labels, average="none")]
        result["kept_prompts"] = int(text.keep.sum())
    result["probe"] = probe_auroc(features.numpy(), y, volumes, folds, c)
    result["headroom"] = [p - z for p, z in zip(result["probe"], result["zero_shot_all_prompts"])]
    for key in ("zero_shot_all_prompts", "zero_shot_sign_selection", "probe", "headroom"):
        values = np.asarray(result[key], dtype=float)
        result[f"mean_{key}"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return result


def k_shot_probe(pretrained: str, k: int, seed: int, volumes: int, demo_seed: int, work_dir: str) -> dict[str, Any]:
    """The probe trained on the k-shot support set only (the bundle's ``prepare_splits``: what SD-MAD's few-shot step
    sees), tested on the test split, against zero-shot on the same test slices: can k shots beat the prompts at all?"""
    import numpy as np
    import torch
    from monai.data import Dataset
    from monai.transforms import Compose, EnsureTyped
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    import sdmad_monai.transforms as T
    from sdmad_monai.data import FASTMRI_BRAIN_CATEGORIES
    from sdmad_monai.networks import SignDrivenDetector
    from sdmad_monai.workflows import prepare_splits

    splits = prepare_splits(
        f"{work_dir}/k{k}_s{seed}",
        categories=FASTMRI_BRAIN_CATEGORIES,
        slices=list(SLICES),
        k_shot=k,
        seed=seed,
        validation_fraction=0.4,
        demo_volumes=volumes,
        demo_seed=demo_seed,
    )
    detector = SignDrivenDetector(
        prompt_bank="fastmri_brain", categories=FASTMRI_BRAIN_CATEGORIES, model_name="sdmad-tiny",
        pretrained=None if pretrained == "none" else pretrained, image_size=64, image_adapter_layers=[2, 3, 5, 6],
        map_layers=[],
    ).eval()  # fmt: skip
    transform = Compose([T.LoadSlicesd(keys="image", axis="axial", index_key="slice"),
                         EnsureTyped(keys="label", dtype=torch.float32),
                         T.clip_slice_transforms("image", 64, detector.image_mean, detector.image_std)])  # fmt: skip

    def embed(items: list) -> tuple[Any, Any, Any]:
        data = list(Dataset(items, transform))
        images = torch.stack([torch.as_tensor(d["image"]) for d in data])
        with torch.no_grad(), detector.adapters_disabled():
            out = detector(images, output="all", maps=False)
        return out["image_features"].numpy(), out["scores"].numpy(), torch.stack([d["label"] for d in data]).numpy()

    (f_train, _, y_train), (f_test, s_test, y_test) = embed(splits["training"]), embed(splits["test"])
    zero_shot, probe = [], []
    for c in range(y_test.shape[1]):
        both = 0 < y_test[:, c].sum() < len(y_test)
        zero_shot.append(float(roc_auc_score(y_test[:, c], s_test[:, c])) if both else float("nan"))
        if both and 0 < y_train[:, c].sum() < len(y_train):
            model = LogisticRegression(C=1.0, max_iter=2000).fit(f_train, y_train[:, c])
            probe.append(float(roc_auc_score(y_test[:, c], model.decision_function(f_test))))
        else:
            probe.append(float("nan"))
    return {
        "pretrained": pretrained,
        "k_shot": k,
        "seed": seed,
        "training_slices": len(y_train),
        "test_slices": len(y_test),
        "zero_shot": zero_shot,
        "k_shot_probe": probe,
        "mean_zero_shot": float(np.nanmean(zero_shot)),
        "mean_k_shot_probe": float(np.nanmean(probe)),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    bu.set_threads(args.threads)
    from sdmad_monai.data import FASTMRI_BRAIN_CATEGORIES
    from sdmad_monai.utils import json_safe

    images, labels, volumes = demo_slices(args.volumes, args.demo_seed)
    print(f"{len(labels)} slices of {args.volumes} demo volumes; positives per category {labels.sum(0).int().tolist()}")
    rows = [measure(p, images, labels, volumes, args.folds, args.probe_c) for p in args.pretrained]
    short = ["crani", "posttx", "lesion", "dural", "ventr", "smallv"]
    for row in rows:
        print(
            f"pretrained={row['pretrained']}: mean zero-shot {row['mean_zero_shot_all_prompts']:.3f} (sign selection "
            f"{row['mean_zero_shot_sign_selection']:.3f}), probe {row['mean_probe']:.3f}, headroom "
            f"{row['mean_headroom']:+.3f}"
        )
        for name, z, p in zip(short, row["zero_shot_all_prompts"], row["probe"]):
            print(f"  {name:7s} zero-shot {z:.3f}  probe {p:.3f}")
    k_rows = []
    if args.k_shot_seeds:
        import contextlib
        import tempfile

        with contextlib.ExitStack() as stack:  # the demo splits go to --work-dir, or to a folder removed afterwards
            work = args.work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="probe_k_shot_"))
            for pretrained in args.pretrained:
                for seed in args.k_shot_seeds:
                    row = k_shot_probe(pretrained, args.k_shot, seed, args.volumes, args.demo_seed, work)
                    k_rows.append(row)
                    print(
                        f"pretrained={pretrained} k={args.k_shot} seed {seed}: test zero-shot "
                        f"{row['mean_zero_shot']:.3f}, probe on the {row['training_slices']} k-shot slices "
                        f"{row['mean_k_shot_probe']:.3f}"
                    )
    result = {
        "benchmark": NAME,
        "command": bu.command_line(argv),
        "machine": bu.machine_info(),
        "settings": {
            "volumes": args.volumes,
            "demo_seed": args.demo_seed,
            "slices": list(SLICES),
            "folds": args.folds,
            "probe_c": args.probe_c,
            "categories": list(FASTMRI_BRAIN_CATEGORIES),
            "positives": labels.sum(0).int().tolist(),
            "slices_total": len(labels),
        },
        "summary": rows,
        "k_shot_probe": k_rows,
    }
    return bu.finish(NAME, json_safe(result), args.smoke, args.output)


if __name__ == "__main__":
    main()
