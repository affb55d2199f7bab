"""The demo backbone: ``sdmad-tiny`` pretrained here, contrastively, on generated image-report pairs.

SD-MAD rests on a vision-language prior (prompts of one category close together, the normal anchor between present
and absent findings). A random-weight CLIP has none, so the offline demo could not show the method. This module
gives the tiny CLIP such a prior without any download:

1. :func:`sdmad_monai.data.report_corpus.build_report_corpus` generates slices in a shifted domain (other sign
   sizes, intensities and contrast than the demo dataset, subjects disjoint from it) with noisy reports written
   from a vocabulary that is not the prompt bank's;
2. :func:`pretrain` trains the whole tiny CLIP on them with open_clip's own contrastive loss
   (:class:`open_clip.loss.ClipLoss`), AdamW, warm-up then cosine decay;
3. :func:`save_demo_weights` stores the result compactly: every tensor in float16, and of the token embedding
   (49,408 rows, three quarters of the parameters) only the rows that training changed -- the others are the seeded
   initialisation, rebuilt on load (the embedding is excluded from weight decay, so a token that never occurs keeps
   its initial row exactly).

The weights ship with the package (``weights/sdmad-tiny-demo.pt``, 1.6 MB, with ``sdmad-tiny-demo.json``: the
recipe, its fingerprint, the file's sha256, the loss curve and the machine it was built on). Shipping beats
building at the first run: pretraining (2000 steps on 960 corpus volumes) took 34 minutes on two CPU cores here,
far beyond the demo's 3-minute budget, and
the bits of a CPU training run differ between processors, while a shipped file gives every user the same prior.
Rebuild it with::

    python -m sdmad_monai.networks.demo_backbone --output_dir sdmad_monai/networks/weights

(same seed and recipe give the same corpus; the weights agree to float rounding on the same kind of processor).
``load_clip("sdmad-tiny", pretrained="demo")`` loads it, after checking the file against its manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from open_clip.loss import ClipLoss
from torch import nn
from tqdm import tqdm

from sdmad_monai.utils import atomic_path, atomic_write_json

__all__ = [
    "DEMO_WEIGHTS_DIR",
    "DEMO_WEIGHTS_FILE",
    "DemoWeightsError",
    "PretrainRecipe",
    "apply_demo_weights",
    "build_demo_weights",
    "pretrain",
    "save_demo_weights",
]

DEMO_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEMO_WEIGHTS_FILE = "sdmad-tiny-demo.pt"
_FORMAT = "sdmad-demo-backbone/1"
_TOKEN_EMBEDDING = "token_embedding.weight"


class DemoWeightsError(RuntimeError):
    """The demo weights file is missing, altered, or does not fit the model."""


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines the demo weights (its JSON is fingerprinted into the manifest).

    Attributes:
        corpus_volumes: generated volumes in the corpus (16 slices each).
        corpus_seed: seed of the corpus.
        init_seed: seed of the tiny CLIP's random initialisation.
        steps: optimiser steps.
        batch_size: image-report pairs per step.
        learning_rate: peak learning rate (AdamW).
        weight_decay: AdamW weight decay of the matrices (not of gains, biases, embeddings or the temperature).
        warmup_steps: linear warm-up steps before the cosine decay.
        omit_probability: chance that a report leaves out a drawn finding.
        false_mention_probability: chance that a report mentions, hedged, a category that is not drawn.
    """

    corpus_volumes: int = 960
    corpus_seed: int = 0
    init_seed: int = 0
    steps: int = 2000
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    omit_probability: float = 0.3
    false_mention_probability: float = 0.08

    def fingerprint(self) -> str:
        """sha256 of the recipe's JSON (sorted keys)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def _decayed(name: str, parameter: nn.Parameter) -> bool:
    """open_clip's rule (matrices decay; gains, biases, the temperature do not), plus: embeddings never decay."""
    if parameter.ndim < 2 or "logit_scale" in name or "ln" in name or "bias" in name:
        return False
    return "embedding" not in name


def pretrain(
    model: Any,  # an open_clip CLIP (open_clip ships no type information)
    images: torch.Tensor,
    tokens: torch.Tensor,
    recipe: PretrainRecipe,
    progress: bool = True,
) -> list[float]:
    """Contrastive image-text training of ``model`` in place (open_clip's ``ClipLoss``).

    Args:
        model: an open_clip CLIP (all parameters are trained).
        images: ``[N, 3, S, S]`` preprocessed slices (any float dtype; batches are cast to float32).
        tokens: ``[N, L]`` tokenised reports.
        recipe: steps, batch size, optimiser settings; ``init_seed`` also seeds the batch order.
        progress: show a progress bar with the running loss.

    Returns:
        The loss of every step.
    """
    if len(images) != len(tokens) or len(images) < 2:
        raise ValueError(f"need at least 2 image-report pairs of equal count, got {len(images)} and {len(tokens)}.")
    named = [(n, p) for n, p in model.named_parameters()]
    for _, parameter in named:
        parameter.requires_grad_(True)
    groups = [
        {"params": [p for n, p in named if _decayed(n, p)], "weight_decay": recipe.weight_decay},
        {"params": [p for n, p in named if not _decayed(n, p)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate, betas=(0.9, 0.98), eps=1e-6)

    def factor(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        done = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * done))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    loss_function = ClipLoss()
    generator = torch.Generator().manual_seed(recipe.init_seed)
    batch_size = min(recipe.batch_size, len(images))
    order = torch.randperm(len(images), generator=generator)
    position = 0
    losses: list[float] = []
    model.train()
    bar = tqdm(range(recipe.steps), desc="pretraining demo CLIP", unit="step", disable=not progress)
    for _ in bar:
        if position + batch_size > len(order):
            order, position = torch.randperm(len(images), generator=generator), 0
        index = order[position : position + batch_size]
        position += batch_size
        image_features, text_features, logit_scale = model(images[index].float(), tokens[index])
        loss = loss_function(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():  # CLIP's clamp of the learned temperature (at most 100)
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    for _, parameter in named:
        parameter.requires_grad_(False)
    return losses


def save_demo_weights(model: nn.Module, initial: nn.Module, path: str | Path, manifest: dict[str, Any]) -> dict:
    """Write the compact weights file (see module docstring) and its manifest ``<path>.json``, atomically.

    Args:
        model: the pretrained tiny CLIP.
        initial: the same architecture at its seeded initialisation (to find the unchanged token rows).
        path: the ``.pt`` file.
        manifest: recipe and provenance entries; ``sha256`` and ``changed_token_rows`` are added.

    Returns:
        The manifest as written.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    start = initial.state_dict()[_TOKEN_EMBEDDING].cpu()
    embedding = state.pop(_TOKEN_EMBEDDING)
    changed = (embedding != start).any(dim=1).nonzero().flatten()
    payload = {
        "format": _FORMAT,
        "init_seed": int(manifest["recipe"]["init_seed"]),
        "state": {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()},
        "token_rows": changed,
        "token_values": embedding[changed].to(torch.float16),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)
    manifest = {**manifest, "format": _FORMAT, "sha256": _sha256(path), "changed_token_rows": int(len(changed))}
    atomic_write_json(path.with_suffix(".json"), manifest)
    return manifest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_demo_manifest(weights: str | Path | None = None) -> dict[str, Any]:
    """The manifest beside the demo weights file (default: the shipped one)."""
    path = Path(weights) if weights else DEMO_WEIGHTS_DIR / DEMO_WEIGHTS_FILE
    manifest = path.with_suffix(".json")
    if not path.is_file() or not manifest.is_file():
        raise DemoWeightsError(
            f"The demo backbone weights {path} (and its manifest {manifest.name}) are missing; they ship with the "
            "package. Reinstall sdmad_monai, or rebuild them with `python -m sdmad_monai.networks.demo_backbone "
            f"--output_dir {path.parent}`."
        )
    return json.loads(manifest.read_text(encoding="utf-8"))


def apply_demo_weights(model: nn.Module, weights: str | Path | None = None) -> dict[str, Any]:
    """Load the demo weights into a freshly initialised ``sdmad-tiny`` (built with the manifest's ``init_seed``).

    Args:
        model: ``sdmad-tiny`` at its seeded random initialisation (``load_clip`` builds it).
        weights: the ``.pt`` file (default: the shipped one).

    Returns:
        The manifest.

    Raises:
        DemoWeightsError: file missing, its sha256 not the manifest's, or tensors that do not fit the model.
    """
    path = Path(weights) if weights else DEMO_WEIGHTS_DIR / DEMO_WEIGHTS_FILE
    manifest = read_demo_manifest(path)
    actual = _sha256(path)
    if actual != manifest.get("sha256"):
        raise DemoWeightsError(
            f"The demo backbone weights {path} do not match their manifest (sha256 {actual[:12]}..., expected "
            f"{str(manifest.get('sha256'))[:12]}...): the file was changed or damaged. Reinstall sdmad_monai or "
            f"rebuild them with `python -m sdmad_monai.networks.demo_backbone --output_dir {path.parent}`."
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise DemoWeightsError(f"{path} is not a demo backbone weights file (expected format {_FORMAT!r}).")
    target = model.state_dict()
    embedding = target[_TOKEN_EMBEDDING].clone()
    rows = payload["token_rows"]
    if len(rows) and int(rows.max()) >= embedding.shape[0]:
        raise DemoWeightsError(f"{path} holds token rows beyond the model's vocabulary of {embedding.shape[0]}.")
    embedding[rows] = payload["token_values"].to(embedding.dtype)
    state = {k: v.to(target[k].dtype) if k in target else v for k, v in payload["state"].items()}
    state[_TOKEN_EMBEDDING] = embedding
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise DemoWeightsError(f"The demo backbone weights {path} do not fit this model: {error}") from error
    return manifest


def build_demo_weights(
    output_dir: str | Path = DEMO_WEIGHTS_DIR, recipe: PretrainRecipe | None = None, progress: bool = True
) -> dict[str, Any]:
    """Generate the corpus, pretrain ``sdmad-tiny`` and write ``output_dir/sdmad-tiny-demo.pt`` + ``.json``.

    Args:
        output_dir: destination folder.
        recipe: the settings (default :class:`PretrainRecipe`).
        progress: progress bars for the corpus and the training.

    Returns:
        The manifest.
    """
    from sdmad_monai.data.report_corpus import build_report_corpus

    from .backbone import TINY_MODEL_NAME, load_clip

    recipe = recipe or PretrainRecipe()
    started = time.time()
    model, tokenizer = load_clip(TINY_MODEL_NAME, None, seed=recipe.init_seed)
    initial, _ = load_clip(TINY_MODEL_NAME, None, seed=recipe.init_seed)
    size = int(model.visual.image_size[0])
    corpus = build_report_corpus(
        recipe.corpus_volumes,
        recipe.corpus_seed,
        size,
        omit_probability=recipe.omit_probability,
        false_mention_probability=recipe.false_mention_probability,
        progress=progress,
    )
    corpus_seconds = time.time() - started
    tokens = tokenizer(corpus.reports)
    losses = pretrain(model, corpus.images, tokens, recipe, progress=progress)
    manifest = {
        "model_name": TINY_MODEL_NAME,
        "recipe": asdict(recipe),
        "recipe_fingerprint": recipe.fingerprint(),
        "corpus": {
            "slices": len(corpus),
            "volumes": recipe.corpus_volumes,
            "subject_fingerprints": corpus.fingerprints,
        },
        "loss": {
            "first": losses[0],
            "last_50_mean": sum(losses[-50:]) / len(losses[-50:]),
            "chance": math.log(min(recipe.batch_size, len(corpus))),
            "every_10_steps": [round(v, 4) for v in losses[::10]],
        },
        "built": {
            "seconds_corpus": round(corpus_seconds, 1),
            "seconds_total": round(time.time() - started, 1),
            "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
            "torch": torch.__version__,
        },
    }
    return save_demo_weights(model, initial, Path(output_dir) / DEMO_WEIGHTS_FILE, manifest)


def main(argv: list[str] | None = None) -> None:
    """``python -m sdmad_monai.networks.demo_backbone``: rebuild the demo weights."""
    defaults = PretrainRecipe()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default=str(DEMO_WEIGHTS_DIR))
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    output_dir = args.pop("output_dir")
    manifest = build_demo_weights(output_dir, PretrainRecipe(**args))
    print(
        f"Demo backbone written to {Path(output_dir) / DEMO_WEIGHTS_FILE} (sha256 {manifest['sha256'][:12]}..., loss "
        f"{manifest['loss']['first']:.3f} -> {manifest['loss']['last_50_mean']:.3f}, "
        f"{manifest['built']['seconds_total']:.0f} s)."
    )


if __name__ == "__main__":
    main()
