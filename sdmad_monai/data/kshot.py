"""Seeded, multi-label aware k-shot support-set selection, saved to JSON so a run can be repeated exactly.

Selection (greedy, deterministic for a seed):

1. Items are shuffled with ``random.Random(seed)``.
2. For each category in order, items positive for it are taken in shuffled order until the support set holds at
   least ``k`` positives of that category. An item positive for several categories counts for each of them, so a
   later category may need fewer (or no) new items.
3. ``num_normal`` normal items (all-zero label) are taken in shuffled order (default ``k * len(categories)``: k
   normals per category, the paper's k normal + k abnormal per category).
4. ``remaining`` is every other item, except (with ``group_key``, default ``"file"``) items from the same volume
   as a support item, so no support volume leaks into validation/test.

The paper's settings are ``select_k_shot(items, 1, categories)`` and ``select_k_shot(items, 4, categories)``.

:func:`hold_out_volumes` is the seeded split of items by volume that the pool and the MONAI Label datastore are
divided with (validation / test, training / validation): no volume on both sides.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdmad_monai.utils import atomic_write_json

__all__ = ["KShotSplit", "hold_out_volumes", "select_k_shot", "save_k_shot", "load_k_shot"]


@dataclass
class KShotSplit:
    """A k-shot split.

    Attributes:
        support: the selected items (in selection order).
        remaining: the pool left for validation/test.
        k: shots per category.
        seed: the seed.
        categories: category names, order of ``label``.
        num_normal: number of normal support items.
    """

    support: list[dict]
    remaining: list[dict]
    k: int
    seed: int
    categories: tuple[str, ...]
    num_normal: int


def select_k_shot(
    items: Sequence[dict],
    k: int,
    categories: Sequence[str],
    seed: int = 0,
    num_normal: int | None = None,
    label_key: str = "label",
    group_key: str | None = "file",
) -> KShotSplit:
    """Select a k-shot support set (rules in the module docstring).

    Args:
        items: datalist items with a multi-hot ``label_key`` of length ``len(categories)``.
        k: positives needed per category (and, by default, normals per category).
        categories: category names.
        seed: shuffle seed.
        num_normal: normal items to select (default ``k * len(categories)``).
        label_key: key of the multi-hot label.
        group_key: key identifying the volume (support volumes are removed from ``remaining``); None to disable.

    Returns:
        :class:`KShotSplit`.

    Raises:
        ValueError: bad k, a label of the wrong length, a category with fewer than k positives, too few normals.
    """
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    categories = tuple(categories)
    n_cat = len(categories)
    num_normal = k * n_cat if num_normal is None else int(num_normal)
    for i, it in enumerate(items):
        lab = it.get(label_key)
        if lab is None or len(lab) != n_cat:
            raise ValueError(
                f"item {i} ({it.get('image', '?')}) has {label_key}={lab!r}; expected {n_cat} values for {categories}."
            )
        if group_key is not None and group_key not in it:
            raise ValueError(
                f"item {i} ({it.get('image', '?')}) lacks the group key {group_key!r}; pass group_key=None."
            )
    available = {c: sum(1 for it in items if float(it[label_key][j]) > 0) for j, c in enumerate(categories)}
    short = {c: n for c, n in available.items() if n < k}
    if short:
        raise ValueError(f"fewer than k={k} positive items for: {short} (positives available per category).")
    normals_available = sum(1 for it in items if not any(float(v) > 0 for v in it[label_key]))
    if normals_available < num_normal:
        raise ValueError(f"{num_normal} normal items requested, only {normals_available} available.")

    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    chosen: list[int] = []
    chosen_set: set[int] = set()
    have = [0] * n_cat
    for j in range(n_cat):
        for i in order:
            if have[j] >= k:
                break
            if i in chosen_set or float(items[i][label_key][j]) <= 0:
                continue
            chosen.append(i)
            chosen_set.add(i)
            for jj in range(n_cat):
                have[jj] += float(items[i][label_key][jj]) > 0
    n_norm = 0
    for i in order:
        if n_norm >= num_normal:
            break
        if i not in chosen_set and not any(float(v) > 0 for v in items[i][label_key]):
            chosen.append(i)
            chosen_set.add(i)
            n_norm += 1
    groups = {items[i][group_key] for i in chosen} if group_key is not None else set()
    remaining = [
        it for i, it in enumerate(items) if i not in chosen_set and (group_key is None or it[group_key] not in groups)
    ]
    return KShotSplit([items[i] for i in chosen], remaining, int(k), int(seed), categories, num_normal)


def hold_out_volumes(
    items: Sequence[Mapping[str, Any]], fraction: float, seed: int = 0, group_key: str = "file"
) -> tuple[list[Any], list[Any]]:
    """Split items by volume: a seeded share of the volumes is held out, whole.

    The distinct ``group_key`` values are sorted, shuffled with ``random.Random(seed)``, and the first
    ``round(n * fraction)`` are held out; with ``fraction > 0`` and at least two volumes that count is kept in
    ``[1, n - 1]``, so each side gets a volume. Items keep their order on both sides and are not copied.

    Args:
        items: items with a ``group_key`` entry naming their volume.
        fraction: share of the volumes held out (not checked: callers say what they accept).
        seed: seed of the shuffle of the volumes.
        group_key: key naming the volume.

    Returns:
        ``(held_out, kept)``: the items of the held-out volumes, then those of the others.
    """
    volumes = sorted({item[group_key] for item in items})
    random.Random(seed).shuffle(volumes)
    count = round(len(volumes) * fraction)
    if fraction > 0 and len(volumes) > 1:
        count = min(max(count, 1), len(volumes) - 1)
    held_out = set(volumes[:count])
    return [i for i in items if i[group_key] in held_out], [i for i in items if i[group_key] not in held_out]


def save_k_shot(split: KShotSplit, path: str | os.PathLike) -> Path:
    """Write a split to JSON atomically (keys ``k``, ``seed``, ``categories``, ``num_normal``, ``support``,
    ``remaining``; ``load_decathlon_datalist(path, False, data_list_key="support")`` also reads it).

    Args:
        split: the split.
        path: output file.

    Returns:
        the path.
    """
    doc = {
        "k": split.k,
        "seed": split.seed,
        "categories": list(split.categories),
        "num_normal": split.num_normal,
        "support": split.support,
        "remaining": split.remaining,
    }
    return atomic_write_json(path, doc)


def load_k_shot(path: str | os.PathLike) -> KShotSplit:
    """Read a split written by :func:`save_k_shot`.

    Args:
        path: the JSON file.

    Returns:
        :class:`KShotSplit`.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"k-shot split file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    needed = ("k", "seed", "categories", "num_normal", "support", "remaining")
    absent = [key for key in needed if key not in doc]
    if absent:
        raise ValueError(f"{path} is not a k-shot split file: missing key(s) {absent}.")
    return KShotSplit(
        doc["support"],
        doc["remaining"],
        int(doc["k"]),
        int(doc["seed"]),
        tuple(doc["categories"]),
        int(doc["num_normal"]),
    )
