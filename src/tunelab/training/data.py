"""The rows a run learns and is judged on, with the shot pool its prompts retrieve from.

One class for `tunelab train` and every training or prompting strategy of `tunelab compare`,
so the pool is filtered once, by one rule, wherever it is used.
"""

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.loading import Example
from tunelab.models.embeddings import check_not_learned, is_model_folder, weights_file
from tunelab.prompting.shot_pool import LeftOutShotRows, usable_shot_rows
from tunelab.prompting.task_prefix import with_task_prefix


@dataclass
class TrainData:
    train: list[Example]
    dev: list[Example]  # per-epoch evaluation ([] = none)
    test: list[Example] | None
    labels: list[str] | None
    files: dict[str, Path]  # role -> path, hashed into the run config
    # labelled rows shots may also come from (--shot-pool), besides the training rows; given
    # as read, filtered here against this data's dev and test rows (a copy without its test
    # split, a search trial's, filters the kept rows again: a no-op)
    extra_shot_rows: list[Example] = field(default_factory=list)
    left_out_shot_rows: LeftOutShotRows = field(default_factory=LeftOutShotRows)
    # what similar shots are retrieved with: auto (MiniLM), tfidf, or a tuned retriever's
    # folder (`tunelab tune-retriever`), stored with the run so inference retrieves alike
    embedder: str = "auto"

    def __post_init__(self):
        held_out = self.dev + (self.test or [])
        self.extra_shot_rows, left_out = usable_shot_rows(
            self.train, self.extra_shot_rows, held_out, self.labels
        )
        self.left_out_shot_rows += left_out
        if self.retriever is not None:  # its weights count like a data file's contents
            check_not_learned(self.retriever, held_out, "dev and test")
            self.files = self.files | {"retriever": weights_file(self.retriever)}

    @property
    def retriever(self) -> Path | None:
        """The tuned retriever's folder, if shots are retrieved with one."""
        return Path(self.embedder) if is_model_folder(self.embedder) else None

    def shot_pool(self, prefix: str | None = None) -> list[Example]:
        """The rows a strategy with shots retrieves them from (training and inference): the
        training rows first (fixed ``shot_ids`` index them), then the kept pool rows."""
        return with_task_prefix(self.train + self.extra_shot_rows, prefix)
