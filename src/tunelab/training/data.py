"""The rows a run learns and is judged on, with the shot pool its prompts retrieve from.

One class for `tunelab train` and every training or prompting strategy of `tunelab compare`,
so the pool is filtered once, by one rule, wherever it is used.
"""

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data import load_dataset, split_examples
from tunelab.data.loading import Example, load_like
from tunelab.data.stats import resolve_labels
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


def load_train_data(
    train_file: Path,
    input_field: str | None = None,
    output_field: str | None = None,
    labels: str = "auto",
    *,
    dev: Path | None = None,
    dev_size: float = 0.0,
    test: Path | None = None,
    test_size: float = 0.0,
    seed: int = 0,
    shot_pool: Path | None = None,
    embedder: str = "auto",
) -> TrainData:
    """The splits of `tunelab train`, `tune-retriever` and `compare`: test and dev from their
    files, else seeded (stratified for labels) shares of the training file, test first;
    ``test_size`` 0 and no file: no test split. The shot pool is read like the training file
    and filtered by TrainData."""
    train_set = load_dataset(train_file, input_field, output_field)
    train = train_set.examples
    label_set = resolve_labels(labels, train)
    stratify = label_set is not None
    files = {"train": train_file}
    test_rows = None
    if test:
        test_rows = load_dataset(test, input_field, output_field).examples
        files["test"] = test
    elif test_size > 0:
        train, test_rows = split_examples(train, test_size, seed=seed, stratify=stratify)
    if dev:
        dev_rows = load_dataset(dev, input_field, output_field).examples
        files["dev"] = dev
    elif dev_size > 0:
        train, dev_rows = split_examples(train, dev_size, seed=seed, stratify=stratify)
    else:
        dev_rows = []
    pool = []
    if shot_pool:
        pool = load_like(shot_pool, train_set).examples
        files["shot_pool"] = shot_pool
    return TrainData(train, dev_rows, test_rows, label_set, files, pool, embedder=embedder)
