"""Generated image-report pairs: the corpus the demo backbone is pretrained on.

Real CLIP learned radiology from web image-caption pairs, never from our prompt bank, and what it learned transfers
only in part to a given hospital's scans. This corpus gives the tiny demo CLIP (``sdmad-tiny``) a prior of that kind:

* **Images**: every axial slice (16 per volume) of volumes drawn by the demo generator
  (:func:`sdmad_monai.data.demo.render_volume`), with random streams disjoint from the demo dataset's
  (``default_rng([CORPUS_STREAM, seed, i])`` here, ``default_rng([seed, i])`` there;
  :func:`~sdmad_monai.data.demo.subject_fingerprint` lets a test check that no subject is shared) and in a *shifted
  domain*: signs drawn with other sizes and intensities (:data:`CORPUS_STYLE`) a per-volume contrast curve (gamma in
  :data:`CORPUS_GAMMA`) and, for a share of the volumes (:data:`CORPUS_INVERTED`), inverted contrast. Slices go
  through the same slice extraction and CLIP preprocessing as the demo's training data.
* **Reports**: one short report per slice, written from a radiology phrase vocabulary (:data:`REPORT_PHRASES`, and
  :data:`REPORT_TERMS` after a qualifier) that shares no four-word run with the prompt bank (a test checks it, frames
  included), with the noise of real reports: a finding is left out with probability ``omit_probability`` (a slice
  whose findings are all left out reads as normal), hedged ("possible", "cannot exclude"), now and then a hedged
  mention of a finding that is not there (a differential), the findings come in random order inside varied sentence
  frames ("findings: ...", "there is ..."), normal slices get varied normal phrasing, and some reports carry a
  technique or location remark that says nothing about the finding.

Everything is deterministic from ``seed``. The slice labels (what is really drawn) are kept beside the reports, so
the corpus can also score a zero-shot model.

Size: mostly data (the report vocabulary, phrasing and noise rules); the code is the seeded writer and
the corpus builder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from tqdm import tqdm

from sdmad_monai.data.demo import (
    CRANIOTOMY,
    DURAL,
    LESION,
    POSTTREATMENT,
    SMALL_VESSEL,
    VENTRICLES,
    SignStyle,
    assign_categories,
    demo_affine,
    load_template,
    render_volume,
    subject_fingerprint,
)
from sdmad_monai.data.fastmri import FASTMRI_BRAIN_CATEGORIES

__all__ = [
    "CORPUS_GAMMA",
    "CORPUS_INVERTED",
    "CORPUS_STREAM",
    "CORPUS_STYLE",
    "NORMAL_PHRASES",
    "REPORT_PHRASES",
    "REPORT_TERMS",
    "category_mentions",
    "slice_labels_from_rows",
    "ReportCorpus",
    "build_report_corpus",
    "volume_slices_for_clip",
    "write_report",
]

#: First entry of every corpus volume's seed sequence; the demo dataset's sequences are ``[seed, i]`` (two entries),
#: so the two never share a random stream.
CORPUS_STREAM = 0x5D_4D_C0

#: The corpus's shifted sign style (the demo's is :data:`sdmad_monai.data.demo.DEMO_STYLE`): wider ranges of size and
#: intensity, so that the prior is right about what a sign is but not about how it looks in the demo's scans.
CORPUS_STYLE = SignStyle(
    bright=(0.85, 1.8),
    dark=(0.0, 0.35),
    craniotomy_half_width=(12.0, 45.0),
    cavity_radius=(3.5, 8.5),
    cavity_rim=(0.8, 3.0),
    lesion_radius=(1.4, 4.6),
    dural_thickness=(1.2, 4.2),
    ventricle_growth=(1.05, 1.6),
    vessel_dots=(6, 32),
)

#: Range of the per-volume contrast curve ``x ** gamma`` applied to the corpus volumes (the demo's volumes: 1).
CORPUS_GAMMA = (0.5, 2.0)

#: Share of corpus volumes shown in inverted contrast (fluid bright, the way T2-weighted scans look); the demo's
#: volumes are never inverted.
CORPUS_INVERTED = 0.4

#: Report phrases per fastMRI+ category: radiology wording, deliberately not the prompt bank's sentences.
REPORT_PHRASES: dict[str, tuple[str, ...]] = {
    CRANIOTOMY: (
        "status post craniotomy",
        "postsurgical changes of prior craniotomy",
        "craniotomy defect of the calvarium",
        "prior cranial surgery with bone flap",
        "skull defect from previous surgery",
        "calvarial gap at the operative site",
        "burr holes and a calvarial defect",
        "metallic artifact from surgical plates and screws",
        "susceptibility artifact at the fixation site",
        "bony discontinuity of the vault",
        "opening in the cranium after surgery",
        "altered signal at the bone margins",
        "scalp swelling overlying the operative site",
    ),
    POSTTREATMENT: (
        "postoperative resection cavity",
        "treatment related changes",
        "surgical bed with surrounding gliosis",
        "post radiation parenchymal changes",
        "postsurgical encephalomalacia",
        "evolving posttreatment changes at the operative bed",
        "fluid filled cavity with an enhancing rim",
        "flair bright tissue surrounding the treated tumor bed",
        "radiation therapy induced white matter injury",
        "gliosis around the tumor resection site",
        "cavity surrounded by bright treated tissue",
        "encephalomalacia near the treated site",
    ),
    LESION: (
        "nonspecific focus of hyperintensity",
        "small indeterminate lesion",
        "punctate bright focus, likely nonspecific",
        "tiny nonspecific parenchymal lesion",
        "focal abnormal signal of unclear significance",
        "solitary hyperintense focus",
        "round bright spot of unclear cause",
        "well circumscribed nodule in one cerebral hemisphere",
        "small nodule without surrounding mass effect",
        "single hyperintense lesion of indeterminate nature",
        "signal intensity abnormality, uncertain etiology",
    ),
    DURAL: (
        "pachymeningeal thickening",
        "smooth dural thickening",
        "thickened dura over the convexity",
        "dural enhancement and thickening",
        "meningeal thickening along the calvarium",
        "inner table dural thickening",
        "linear bright rim of the dura",
        "diffuse meningeal thickening",
        "thick dural band adjacent to the cortex",
        "meninges thickened near the surgical site",
        "bright band between calvarium and cortex",
    ),
    VENTRICLES: (
        "ventriculomegaly",
        "prominent lateral ventricles",
        "dilated ventricular system",
        "hydrocephalus",
        "ventricles are enlarged",
        "enlargement of the lateral ventricles",
        "large ventricles with dilated frontal horns",
        "rounded frontal horns",
        "enlarged cerebrospinal fluid spaces",
        "ventricles large out of proportion to the sulci",
        "ventricular dilatation and white matter thinning",
        "disproportionately enlarged dark ventricles",
    ),
    SMALL_VESSEL: (
        "chronic microvascular ischemic changes",
        "scattered white matter hyperintensities",
        "white matter disease around the ventricles",
        "mild small vessel disease",
        "leukoaraiosis",
        "age related white matter changes",
        "multiple punctate white matter foci",
        "confluent periventricular hyperintensity",
        "patchy deep white matter hyperintensities",
        "numerous small hyperintense dots throughout the white matter",
        "changes of cerebral microangiopathy",
        "many bright foci in deep white matter",
    ),
}

#: Key terms per category, the words a report's impression is made of; :func:`write_report` also writes a finding as
#: ``[qualifier] term`` (:data:`_QUALIFIERS`), so that each term is seen in many contexts and the text tower learns
#: words, not only whole phrases (the way real CLIP knows "hydrocephalus" in any sentence).
REPORT_TERMS: dict[str, tuple[str, ...]] = {
    CRANIOTOMY: (
        "craniotomy",
        "burr holes",
        "bone flap",
        "skull defect",
        "calvarial defect",
        "fixation plates",
        "metallic artifact",
        "cranial opening",
    ),
    POSTTREATMENT: (
        "resection cavity",
        "surgical cavity",
        "gliosis",
        "encephalomalacia",
        "radiation change",
        "treated tumor bed",
        "posttreatment change",
        "scarring",
    ),
    LESION: (
        "nonspecific lesion",
        "indeterminate focus",
        "bright spot",
        "hyperintense focus",
        "solitary nodule",
        "focal abnormality",
        "signal abnormality",
    ),
    DURAL: (
        "dural thickening",
        "thickened dura",
        "pachymeningeal thickening",
        "meningeal thickening",
        "thick dura",
        "dural rim",
    ),
    VENTRICLES: (
        "ventriculomegaly",
        "hydrocephalus",
        "enlarged ventricles",
        "dilated ventricles",
        "large ventricles",
        "prominent ventricles",
        "dilated csf spaces",
    ),
    SMALL_VESSEL: (
        "small vessel disease",
        "microangiopathy",
        "leukoaraiosis",
        "white matter hyperintensities",
        "periventricular hyperintensity",
        "punctate white matter foci",
        "ischemic white matter change",
    ),
}

_QUALIFIERS = ("", "", "mild", "moderate", "marked", "small", "chronic", "stable", "new", "minimal", "prior", "focal")

#: Ways a report says "no finding".
NORMAL_PHRASES: tuple[str, ...] = (
    "no acute intracranial abnormality",
    "unremarkable brain MRI",
    "normal MRI of the brain",
    "brain parenchyma within normal limits",
    "no mass, hemorrhage or infarct",
    "ventricles and sulci are normal in size",
    "no intracranial findings",
    "normal study for age",
    "symmetric ventricles, anatomy normal",
    "intact calvarium without lesions",
    "normal gray white matter differentiation",
    "healthy appearing brain",
    "no abnormality detected",
)

#: Sentence frames around the findings, as reports and captions word them (articles, "showing", "on MRI"...): the
#: text tower learns that the frame says nothing about the finding, the way real CLIP learned it from web captions
#: (the prompt bank's sentences have frames of their own; no frame and phrase together repeat four of their words).
_FRAMES = (
    "{}",
    "{}",
    "findings: {}",
    "impression: {}",
    "mri of the brain shows {}",
    "there is {}",
    "axial slice with {}",
    "the scan demonstrates {}",
    "{} is seen",
    "exam notable for {}",
    "brain mr: {}",
    "images show {}",
    "a slice showing {}",
    "an axial image showing {}",
    "on mri, {}",
    "a scan with {}",
    "an mr scan that shows {}",
    "brain imaging showing {}",
)

_HEDGES = ("possible", "probable", "suspected", "likely", "cannot exclude", "questionable")
_LOCATIONS = ("left frontal", "right frontal", "left parietal", "right parietal", "bifrontal", "occipital")
_REMARKS = ("axial image", "mild motion artifact", "limited evaluation", "comparison with prior", "single slice")


def category_mentions(category: str) -> tuple[str, ...]:
    """Every wording :func:`write_report` can use for ``category``: its phrases and its key terms."""
    return REPORT_PHRASES[category] + REPORT_TERMS[category]


def _mention(category: str, rng: np.random.Generator) -> str:
    """A phrase of ``category`` (half the time) or one of its key terms after a random qualifier."""
    if rng.uniform() < 0.5:
        return REPORT_PHRASES[category][int(rng.integers(len(REPORT_PHRASES[category])))]
    qualifier = _QUALIFIERS[int(rng.integers(len(_QUALIFIERS)))]
    term = REPORT_TERMS[category][int(rng.integers(len(REPORT_TERMS[category])))]
    return f"{qualifier} {term}".strip()


def write_report(
    findings: Sequence[str],
    rng: np.random.Generator,
    omit_probability: float = 0.3,
    false_mention_probability: float = 0.08,
) -> str:
    """One report for a slice showing ``findings`` (fastMRI+ category strings), with real reports' noise.

    Args:
        findings: categories drawn on the slice (empty for a normal slice).
        rng: random generator.
        omit_probability: chance that a finding is left out of the report.
        false_mention_probability: chance that the report also mentions, hedged, a category that is not drawn (a
            differential diagnosis, or a finding outside this slice).

    Returns:
        The report, lower case, phrases joined with ``"; "``.
    """
    unknown = [f for f in findings if f not in REPORT_PHRASES]
    if unknown:
        raise ValueError(f"no report phrases for categories {unknown}; expected some of {list(REPORT_PHRASES)}.")
    parts = []
    for finding in findings:
        if rng.uniform() < omit_probability:
            continue
        phrase = _mention(finding, rng)
        if rng.uniform() < 0.2:
            phrase = f"{_LOCATIONS[int(rng.integers(len(_LOCATIONS)))]} {phrase}"
        if rng.uniform() < 0.2:
            phrase = f"{_HEDGES[int(rng.integers(len(_HEDGES)))]} {phrase}"
        parts.append(phrase)
    absent = [c for c in REPORT_PHRASES if c not in findings]
    if absent and rng.uniform() < false_mention_probability:
        other = absent[int(rng.integers(len(absent)))]
        phrase = _mention(other, rng)
        parts.append(f"{_HEDGES[int(rng.integers(len(_HEDGES)))]} {phrase}")
    if not parts:
        parts.append(NORMAL_PHRASES[int(rng.integers(len(NORMAL_PHRASES)))])
    order = rng.permutation(len(parts))
    parts = [parts[i] for i in order]
    parts[0] = _FRAMES[int(rng.integers(len(_FRAMES)))].format(parts[0])
    if rng.uniform() < 0.15:
        parts.append(_REMARKS[int(rng.integers(len(_REMARKS)))])
    return "; ".join(parts).lower()


@dataclass
class ReportCorpus:
    """Slices and their reports.

    Attributes:
        images: ``[N, 3, S, S]`` float16 CLIP-normalised slices.
        reports: ``N`` report strings.
        labels: ``[N, K]`` multi-hot of what is drawn on each slice (:data:`FASTMRI_BRAIN_CATEGORIES` order).
        volumes: ``[N]`` index of the volume each slice comes from.
        fingerprints: one :func:`sdmad_monai.data.demo.subject_fingerprint` per volume (its anatomy).
    """

    images: torch.Tensor
    reports: list[str]
    labels: torch.Tensor
    volumes: torch.Tensor
    fingerprints: list[str]

    def __len__(self) -> int:
        return len(self.reports)


def slice_labels_from_rows(rows: Sequence[tuple[int, tuple | None, str]], num_slices: int) -> np.ndarray:
    """Slice labels of a generated volume from its fastMRI+ rows (:func:`~sdmad_monai.data.demo.render_volume`).

    Args:
        rows: ``(slice, box or None, label)`` rows; labels that are not categories (``Normal for age``) are ignored.
        num_slices: the volume's number of axial slices.

    Returns:
        ``[Z, K]`` float32 multi-hot (:data:`FASTMRI_BRAIN_CATEGORIES` order): a box row marks its slice, a study-level
        row (small vessel change, written at slice 0) marks slice 0.
    """
    labels = np.zeros((num_slices, len(FASTMRI_BRAIN_CATEGORIES)), dtype=np.float32)
    for z, _box, label in rows:
        if label in FASTMRI_BRAIN_CATEGORIES:
            labels[z, FASTMRI_BRAIN_CATEGORIES.index(label)] = 1.0
    return labels


def volume_slices_for_clip(
    data: np.ndarray, image_size: int = 64, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """All axial slices of a generated volume through the demo's slice extraction and CLIP chain.

    Args:
        data: ``[X, Y, Z]`` volume on :func:`~sdmad_monai.data.demo.demo_affine`'s grid.
        image_size: slice side after preprocessing.
        mean: CLIP normalisation mean (default OpenAI CLIP's, which ``sdmad-tiny`` uses).
        std: CLIP normalisation std.

    Returns:
        ``[Z, 3, S, S]`` float32, slice 0 first.
    """
    from sdmad_monai.transforms import ExtractSlices, clip_slice_transforms
    from sdmad_monai.transforms.intensity import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    mean = OPENAI_CLIP_MEAN if mean is None else mean
    std = OPENAI_CLIP_STD if std is None else std

    volume = MetaTensor(torch.as_tensor(data, dtype=torch.float32)[None], affine=torch.as_tensor(demo_affine()))
    slices = torch.stack([s.as_tensor() for s in ExtractSlices("axial")(volume)])  # [Z, 1, H, W]
    out = clip_slice_transforms("image", image_size, mean, std)({"image": slices})["image"]
    return out.as_tensor() if isinstance(out, MetaTensor) else out


def build_report_corpus(
    num_volumes: int,
    seed: int = 0,
    image_size: int = 64,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    omit_probability: float = 0.3,
    false_mention_probability: float = 0.08,
    progress: bool = True,
) -> ReportCorpus:
    """Generate the corpus described in the module docstring.

    Args:
        num_volumes: number of generated volumes (16 slices each); at least 7 (six categories and normals).
        seed: corpus seed; the same seed gives the same corpus.
        image_size: slice side after preprocessing (the demo backbone's input size).
        mean: CLIP normalisation mean (default OpenAI CLIP's, which ``sdmad-tiny`` uses).
        std: CLIP normalisation std.
        omit_probability: chance that a report leaves out a drawn finding.
        false_mention_probability: chance that a report mentions, hedged, a category that is not drawn.
        progress: show a progress bar.

    Returns:
        :class:`ReportCorpus`.
    """
    if isinstance(num_volumes, bool) or int(num_volumes) != num_volumes or num_volumes < 7:
        raise ValueError(f"num_volumes must be an integer >= 7, got {num_volumes!r}.")
    template, t_aff = load_template()
    assignment = assign_categories(int(num_volumes), np.random.default_rng([CORPUS_STREAM, int(seed)]))
    images, reports, labels, volumes, fingerprints = [], [], [], [], []
    for index, categories in enumerate(tqdm(assignment, desc="report corpus", unit="volume", disable=not progress)):
        key = [CORPUS_STREAM, int(seed), index]
        fingerprints.append(subject_fingerprint(template, t_aff, key))
        rng = np.random.default_rng(key)
        data, rows = render_volume(template, t_aff, categories, rng, CORPUS_STYLE)
        gamma = rng.uniform(*CORPUS_GAMMA)
        data = data.astype(np.float32)
        data = (data / max(float(data.max()), 1.0)) ** gamma
        if rng.uniform() < CORPUS_INVERTED:
            data = 1.0 - data
        slice_labels = slice_labels_from_rows(rows, data.shape[2])
        images.append(volume_slices_for_clip(data, image_size, mean, std).to(torch.float16))
        for z in range(data.shape[2]):
            present = [FASTMRI_BRAIN_CATEGORIES[k] for k in np.flatnonzero(slice_labels[z])]
            reports.append(write_report(present, rng, omit_probability, false_mention_probability))
        labels.append(torch.from_numpy(slice_labels))
        volumes.append(torch.full((data.shape[2],), index, dtype=torch.long))
    return ReportCorpus(torch.cat(images), reports, torch.cat(labels), torch.cat(volumes), fingerprints)
