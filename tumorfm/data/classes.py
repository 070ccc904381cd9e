"""Class names: how a dataset's label becomes a pool class, which classes are lesions (counted
and measured by `predict --statistics`), the order classes are painted, what a dataset taught,
and the colour each label value is drawn in (reports, plots, DICOM-SEG)."""

from __future__ import annotations

import re

CLASS_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Words that make a class a lesion, matched as words of a snake_case name (so 'cystic_duct' and
# 'massive_organ' are not): whole words, then suffixes that name a tumour type ('glioblastoma').
LESION_NAME = re.compile(
    r"(?<![a-z])(?:tumou?rs?|lesions?|cancers?|metasta[a-z]*|mets|nodules?|cysts?|masse?s?|polyps?"
    r"|neoplasms?|gtv[a-z0-9]*|lymph_?nodes?)(?![a-z])"
    r"|(?:carcinoma|sarcoma|blastoma|glioma|lymphoma|melanoma|meningioma|adenoma|myeloma)s?(?![a-z])"
)


def class_name(label: str) -> str:
    """A dataset's label name as a pool class name: lower snake_case ('Liver tumor' -> ...)."""
    name = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    return name if re.match(r"^[a-z]", name or "") else f"class_{name}"


def named_as_lesion(name: str) -> bool:
    """Whether a class name says lesion ('liver_tumour', 'GTVp', 'lymph_node', 'glioblastoma');
    camelCase is split into words first ('LiverTumor')."""
    return bool(LESION_NAME.search(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()))


def rename_labels(labels: dict[int, str], mapping: dict[str, str]) -> dict[int, str]:
    """Label value -> class name (background left out): the label's own name in snake_case, or
    what `mapping` renames it to (keyed by the label's own or snake_case name)."""
    return {
        value: class_name(mapping.get(name, mapping.get(class_name(name), name)))
        for value, name in labels.items()
        if value
    }


def lesion_classes(classes: list[str], parents: dict[str, str], tumours=()) -> list[str]:
    """A pool's tumour classes unless its file lists them: each class drawn inside a parent (a
    liver tumour in its liver), each listed in `tumours` (synthesised ones) and each whose name
    says lesion (named_as_lesion)."""
    return [c for c in classes if c in parents or c in tumours or named_as_lesion(c)]


def learnt_classes(dataset: dict) -> list[str]:
    """What a dataset taught the network, so what its plan predicts: its labels, and the tumour
    class it synthesises online (annotated per sample, so not in its `annotated`)."""
    synthesis = dataset.get("synthesis") or {}
    tumour = synthesis.get("tumour")
    return [
        *dataset["annotated"],
        *([tumour] if tumour not in (None, *dataset["annotated"]) else []),
    ]


def paint_order(classes: list[str], parents: dict[str, str]) -> list[str]:
    """Organs before the tumours inside them, so a tumour is painted over its organ."""

    def depth(name: str) -> int:
        return 0 if name not in parents else 1 + depth(parents[name])

    return sorted(classes, key=depth)


RGB = tuple[int, int, int]

# Okabe-Ito without its black (colour-blind safe), then Tableau 10 without its grey: 16 colours.
PALETTE: tuple[RGB, ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
    (0, 114, 178), (213, 94, 0), (204, 121, 167),
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def class_colours(n: int) -> list[RGB]:
    """Colours for labels 1..n (colours[k - 1] paints label k); the palette cycles after 16."""
    return [PALETTE[i % len(PALETTE)] for i in range(n)]
