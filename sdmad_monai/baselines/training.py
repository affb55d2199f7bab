"""Training glue of the baselines (the modules themselves are pure ``nn.Module``\\ s): their sources' regimes, seeded.

- :func:`train_d24fad`: leave one dataset out - queries drawn from the normal images of the *other* datasets, each
  with ``shots`` random supports of its own dataset (never itself); Adam, lr 1e-4, betas (0.5, 0.999) (D²4FAD's);
- :func:`train_sir`: one-shot universal - exactly one normal image per dataset, mixed, one model; each step sees the
  images under a random flip and a shift of up to 1/16 of the size (a choice made here: one image per dataset cannot
  be trained on unchanged without memorising it); Adam, lr 1e-4;
- :func:`score_images`: maps and scores in batches, without gradients.

Checkpoint selection is the caller's and must use validation data, never test data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.utils import optional_import

from .d24fad import D24FAD
from .sir import SIR

tqdm, _has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["score_images", "train_d24fad", "train_sir"]


def _check_sets(normal_sets: Sequence[torch.Tensor], need: int) -> None:
    if not normal_sets:
        raise ValueError("No training dataset given.")
    for i, images in enumerate(normal_sets):
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < need:
            raise ValueError(
                f"Training set {i} must be [N, 3, H, W] with N >= {need}, got shape {tuple(images.shape)}."
            )


def _optimise(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    step: Callable[[], torch.Tensor],
    steps: int,
    desc: str,
    progress: bool,
) -> list[float]:
    """``steps`` optimiser steps on the loss ``step()`` draws, the model in training mode meanwhile; the losses."""
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress or not _has_tqdm):
        loss = step()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def train_d24fad(
    model: D24FAD,
    normal_sets: Sequence[torch.Tensor],
    shots: int = 4,
    steps: int = 100,
    batch_size: int = 16,
    lr: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Train the student and the learn-to-weight keys (leave one dataset out: pass the other datasets' normals).

    Args:
        model: the detector.
        normal_sets: per training dataset ``[N, 3, H, W]`` normal images (N > ``shots``).
        shots: supports per query.
        steps: optimiser steps; each draws one dataset, ``batch_size`` queries from it and ``shots`` supports per query.
        batch_size: queries per step (at most N - 1 of the drawn dataset).
        lr: Adam learning rate.
        seed: seed of the draws.
        progress: show a progress bar.

    Returns:
        The total loss of every step.
    """
    _check_sets(normal_sets, shots + 1)
    generator = torch.Generator().manual_seed(int(seed))
    optimiser = torch.optim.Adam(model.trainable_parameters(), lr=lr, betas=(0.5, 0.999))

    def step() -> torch.Tensor:
        images = normal_sets[int(torch.randint(len(normal_sets), (1,), generator=generator))]
        n = images.shape[0]
        queries = torch.randperm(n, generator=generator)[: min(batch_size, n - 1)]
        supports = []
        for q in queries.tolist():
            others = torch.tensor([i for i in range(n) if i != q])
            supports.append(images[others[torch.randperm(n - 1, generator=generator)[:shots]]])
        return model.loss(images[queries], torch.stack(supports)).total

    return _optimise(model, optimiser, step, steps, "D²4FAD", progress)


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    limit = max(1, images.shape[-1] // 16)
    dy, dx = (int(v) for v in torch.randint(-limit, limit + 1, (2,), generator=generator))
    return torch.roll(images, shifts=(dy, dx), dims=(-2, -1))


def train_sir(
    model: SIR,
    images: torch.Tensor,
    steps: int = 100,
    lr: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """One-shot universal training: ``images`` ``[D, 3, H, W]`` is exactly one normal image of each of D datasets.

    Returns:
        The loss of every step.
    """
    _check_sets([images], 1)
    generator = torch.Generator().manual_seed(int(seed))
    optimiser = torch.optim.Adam(model.trainable_parameters(), lr=lr)
    return _optimise(model, optimiser, lambda: model.loss(_augment(images, generator)), steps, "SIR", progress)


@torch.no_grad()
def score_images(
    model: D24FAD | SIR, images: torch.Tensor, supports: torch.Tensor | None = None, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image scores [N], anomaly maps [N, H, W])``; D²4FAD needs its ``supports`` ``[k, 3, H, W]``."""
    model.eval()
    scores, maps = [], []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size]
        out = model(chunk, supports) if isinstance(model, D24FAD) else model(chunk)
        scores.append(out.image_score)
        maps.append(out.anomaly_map)
    return torch.cat(scores), torch.cat(maps)
