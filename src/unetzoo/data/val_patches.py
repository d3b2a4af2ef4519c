"""The fixed validation patches of the per-epoch pseudo Dice: a bounded cost per epoch, whatever the images' size.

nnU-Net computes its per-epoch pseudo Dice on a fixed number of validation batches of patches (50 batches, 33 %
centred on foreground), not on whole cases; the held-out fold is predicted whole, with the full inference
procedure, once after training. Here ``count`` patches of the plan's patch size are cropped once per run (seeded)
from the validation items: patch k from the k-th item of a round robin over the subjects (3D+t: frame 0 of every
subject, then frame 1 ...), centred on a random foreground voxel with probability ``positive`` (else anywhere), so
every epoch scores the same voxels and the cost is ``count`` predictions of one patch. A patch that covers its whole
item (an image no larger than the patch) is taken once.
"""

from __future__ import annotations

import numpy as np
import torch


def spread(items: list[dict], count: int) -> list[dict]:
    """The first ``count`` of ``items`` in a round robin over their subjects (``case_index``): the first item of each
    subject, then the second ...; the items the patches come from (only these need preprocessing)."""
    by_subject: dict[int, list[dict]] = {}
    for index, item in enumerate(items):
        by_subject.setdefault(int(item.get("case_index", index)), []).append(item)
    rounds = max((len(v) for v in by_subject.values()), default=0)
    return [v[r] for r in range(rounds) for v in by_subject.values() if r < len(v)][:count]


def _start(size: int, extent: int, centre: int | None, rng: np.random.Generator) -> int:
    """First index of a window of ``size`` inside ``extent``: around ``centre``, else uniform."""
    if centre is None:
        return int(rng.integers(0, extent - size + 1))
    return int(np.clip(centre - size // 2, 0, extent - size))


def validation_patches(
    items: list[dict],
    patch_size: list[int],
    count: int,
    seed: int,
    positive: float = 1 / 3,
    num_classes: int | None = None,
) -> list[dict]:
    """Up to ``count`` crops ``{"image", "label", "name", "frame_index", "case_index"}`` (module docstring) of the
    preprocessed validation ``items`` (``image`` (C, *S), ``label`` (1, *S)), taken in turn (give them in
    :func:`spread`'s order). Label values from ``num_classes`` on (the ignore label) are no foreground."""
    if not items or count < 1:
        return []
    rng = np.random.default_rng(seed)
    patches, seen = [], set()
    for k in range(count):
        index = k % len(items)
        item = items[index]
        image, label = torch.as_tensor(item["image"]), torch.as_tensor(item["label"])
        shape = image.shape[1:]
        sizes = [min(int(p), int(s)) for p, s in zip(patch_size, shape)]
        classes = label[0] > 0 if num_classes is None else (label[0] > 0) & (label[0] < num_classes)
        foreground = torch.nonzero(classes)
        centre = (
            foreground[int(rng.integers(len(foreground)))].tolist()
            if len(foreground) and rng.random() < positive
            else [None] * len(shape)
        )
        start = tuple(_start(size, extent, c, rng) for size, extent, c in zip(sizes, shape, centre))
        if (index, start) in seen:
            continue
        seen.add((index, start))
        window = (slice(None),) + tuple(slice(s, s + size) for s, size in zip(start, sizes))
        patches.append(
            {
                "image": image[window].clone(),
                "label": label[window].clone(),
                "name": item.get("name", str(index)),
                "frame_index": int(item.get("frame_index", 0)),
                "case_index": int(item.get("case_index", index)),
            }
        )
    return patches
