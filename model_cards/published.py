"""The paper's facts for the model cards: title, citation, the original code and license, and its downstream results
(docs/design.md, sections 'What MAEST is' and 'Downstream protocol'). The released checkpoints themselves (shape,
label set, training facts) are registered in `maest.modeling.published`."""

from dataclasses import dataclass


PAPER_TITLE = "Efficient Supervised Training of Audio Transformers for Music Representation Learning"
PAPER_URL = "https://arxiv.org/abs/2309.16418"
ORIGINAL_CODE_URL = "https://github.com/palonso/MAEST"
ORIGINAL_LICENSE = "cc-by-nc-sa-4.0"
ORIGINAL_LICENSE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/"

CITATION_BIBTEX = """@inproceedings{alonso2023efficient,
  title     = {Efficient Supervised Training of Audio Transformers for Music Representation Learning},
  author    = {Alonso-Jim{\\'e}nez, Pablo and Serra, Xavier and Bogdanov, Dmitry},
  booktitle = {Proceedings of the 24th International Society for Music Information Retrieval Conference (ISMIR)},
  year      = {2023},
  address   = {Milan, Italy},
  doi       = {10.5281/zenodo.10265414},
}"""

@dataclass(frozen=True)
class DownstreamResult:
    """A paper figure: macro ROC-AUC and macro average precision, as fractions."""

    dataset_type: str
    dataset_name: str
    dataset_config: str | None
    roc_auc: float
    average_precision: float
    baseline_roc_auc: float  # EfficientNet-B0 trained on the same data (the paper's CNN baseline)
    baseline_average_precision: float


# docs/design.md, section 'Downstream protocol': the 30 s model's embeddings (block 7, cls + dist + mean tokens)
# with an MLP probe.
PAPER_DOWNSTREAM_RESULTS = (
    DownstreamResult("mtg-jamendo", "MTG-Jamendo (genre)", "genre", 0.882, 0.216, 0.877, 0.199),
    DownstreamResult("mtg-jamendo", "MTG-Jamendo (instrument)", "instrument", 0.800, 0.229, 0.776, 0.198),
    DownstreamResult("mtg-jamendo", "MTG-Jamendo (mood/theme)", "moodtheme", 0.781, 0.154, 0.756, 0.136),
    DownstreamResult("mtg-jamendo", "MTG-Jamendo (top-50 tags)", "top50tags", 0.840, 0.315, 0.831, 0.297),
    DownstreamResult("magnatagatune", "MagnaTagATune", None, 0.920, 0.419, 0.902, 0.374),
    DownstreamResult("msd", "Million Song Dataset (paper's first split)", "split-1", 0.924, 0.407, 0.904, 0.328),
    DownstreamResult("msd", "Million Song Dataset (paper's second split)", "split-2", 0.898, 0.354, 0.889, 0.328),
)
PAPER_PROBE_DESCRIPTION = (
    "frozen embeddings of a middle transformer block (cls, distillation and mean patch tokens concatenated) per "
    "segment, averaged per track, with a shallow probe (one hidden layer of 512 units, or linear) selected on "
    "validation ROC-AUC; macro ROC-AUC and macro average precision on the test set"
)
