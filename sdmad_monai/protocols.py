"""The paper's three evaluation protocols, named once (Section 4): what each measures, on which detector output, with
which metrics, in which table, and where the package computes it.

"Protocol" in class names means these: :class:`~sdmad_monai.inferers.ProtocolInferer` scores the evaluation
variants, :class:`~sdmad_monai.handlers.ProtocolReport` writes protocols 1-3 on fastMRI+-style multi-label data
(Tables 2-3 and the image AUROC), :class:`~sdmad_monai.handlers.DetectionReport` writes protocol 1 on BMAD data
(Table 1: image and pixel AUROC). :func:`sdmad_monai.handlers.protocol_metric_handlers` builds the MONAI metric
handlers that compute them in ``configs/evaluate.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROTOCOLS", "Protocol", "protocol"]


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol of the paper.

    Attributes:
        number: the paper's numbering (1-3).
        name: short name used in this package.
        paper_table: where the paper reports it.
        outputs: the :class:`~sdmad_monai.networks.outputs.DetectorOutput` fields it reads.
        metrics: the metric names written to ``metrics.json`` and ``engine.state.metrics``.
        description: what it measures.
    """

    number: int
    name: str
    paper_table: str
    outputs: tuple[str, ...]
    metrics: tuple[str, ...]
    description: str


PROTOCOLS: tuple[Protocol, ...] = (
    Protocol(
        1,
        "detection",
        "Table 1",
        ("image_score", "anomaly_map"),
        ("image_auroc", "pixel_auroc"),
        "normal vs abnormal: image AUROC of max_c s_c - cos(image, anchor); pixel AUROC of the anomaly maps (BMAD)",
    ),
    Protocol(
        2,
        "multi_label",
        "Table 2",
        ("predictions",),
        ("hamming_score", "subset_accuracy"),
        "multi-label prediction: Hamming score and subset accuracy of the Eq. 8 predictions",
    ),
    Protocol(
        3,
        "category",
        "Table 3",
        ("scores",),
        ("category_auroc", "mean_category_auroc"),
        "category-wise AUROC of the Eq. 7 scores and their mean over the categories with both classes",
    ),
)


def protocol(name_or_number: str | int) -> Protocol:
    """The protocol by name (``"detection"``, ``"multi_label"``, ``"category"``) or number (1-3).

    Raises:
        KeyError: no such protocol.
    """
    for entry in PROTOCOLS:
        if name_or_number in (entry.name, entry.number):
            return entry
    raise KeyError(f"No protocol {name_or_number!r}; the paper's are {[(p.number, p.name) for p in PROTOCOLS]}.")
