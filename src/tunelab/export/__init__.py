"""``tunelab export``: a trained run in the format a deployment engine takes.

- ``hf``: a Hugging Face folder (:mod:`tunelab.export.hf`);
- ``gguf``: one GGUF file for llama.cpp (:mod:`tunelab.export.gguf_file`);
- ``ollama``: the GGUF and a Modelfile (:mod:`tunelab.export.ollama`);
- ``vllm``: base + PEFT adapter and the ``vllm serve`` command (:mod:`tunelab.export.vllm`).

Every export also carries what the run's prompting depends on: ``tunelab.json`` (method, task
prefix, prompt strategy, labels) and ``system_prompt.txt`` when the run has a system text, so
the deployed model is prompted the way it was evaluated. The folder appears atomically.
"""

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TuneLabError
from tunelab.export.gguf_file import QUANTS
from tunelab.paths import atomic_directory
from tunelab.prompting.render import system_text
from tunelab.prompting.strategy import PromptStrategy
from tunelab.runs import check_out, claim, user_entries
from tunelab.training.artifacts import (
    ADAPTER_DIR,
    META_FILE,
    read_meta,
    read_shot_pool,
    run_retriever,
)

FORMATS = ("hf", "gguf", "ollama", "vllm")
SYSTEM_FILE = "system_prompt.txt"
SOFT_PROMPT_METHODS = ("prompt-tuning", "prefix-tuning", "p-tuning")


@dataclass
class Exported:
    kind: str  # what was written, in words
    command: str | None = None  # how to run it with its engine
    note: str | None = None


def export_run(
    run_dir: Path,
    out: Path,
    *,
    fmt: str = "hf",
    quant: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> Exported:
    """Write the export to ``out``: new, empty or an earlier export (replaced in one step,
    keeping any file a user added to it; :func:`tunelab.runs.check_out`)."""
    meta = read_meta(run_dir)
    check_request(run_dir, meta, fmt, quant)
    check_out(out, "export")
    adapter = run_dir / ADAPTER_DIR
    name = safe_name(run_dir.resolve().name)
    system = run_system_text(meta)
    if fmt in ("gguf", "ollama"):
        _preflight_gguf(meta, adapter, fmt, system)
    try:
        with atomic_directory(out, keep=user_entries(out)) as scratch:
            exported = _write(fmt, meta, adapter, scratch, name, quant or "f16", system, device,
                              dtype)  # fmt: skip
            if system:
                (scratch / SYSTEM_FILE).write_text(system + "\n", encoding="utf-8")
            if meta.get("shot_pool"):
                exported = _with_shot_pool(exported, meta, adapter, scratch)
            record = {**meta, "exported_from": str(run_dir.resolve()), "format": fmt}
            (scratch / META_FILE).write_text(
                json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8"
            )
            claim(scratch, "export", files=sorted(entry.name for entry in scratch.iterdir()))
    except OSError as err:  # --out under a file, in a folder we may not write, a full disk ...
        raise TuneLabError(f"--out {out}: {err.strerror or err}") from None
    return exported


def _with_shot_pool(exported: Exported, meta: dict, adapter: Path, folder: Path) -> Exported:
    """A run trained with retrieved shots expects them in every prompt, and no deployment
    engine retrieves: the pool travels with the export and the note says what to do."""
    import shutil

    if not (folder / meta["shot_pool"]).is_file():  # hf/vllm copy the adapter folder whole
        read_shot_pool(adapter.parent, meta)  # a missing or unreadable pool: a clear error
        shutil.copy2(adapter / meta["shot_pool"], folder / meta["shot_pool"])
    own = meta.get("retriever_dir")  # a tuned retriever finds those shots: it travels too
    if own and not (folder / own).is_dir():
        run_retriever(adapter.parent, meta)  # a missing retriever: a clear error
        shutil.copytree(adapter / own, folder / own)
    strategy = PromptStrategy.model_validate(meta["strategy"])
    retriever = meta.get("retriever") or "none"
    if own:
        retriever = f"the tuned retriever in {own}/"
    note = (
        f"this run was trained and evaluated with {strategy.shots} {strategy.selector} shots "
        f"from {meta['shot_pool']} (retriever: {retriever}) before each "
        "query; the engine will not add them, so put them in the prompt yourself, or serve "
        "the run with `tunelab serve`, which does"
    )
    if strategy.knn_weight:
        note += (
            f"; its evaluations also blended the label scores with the shots' vote "
            f"(knn_weight {strategy.knn_weight:g}), which neither the engine nor serve does"
        )
    return Exported(exported.kind, exported.command, "; ".join(filter(None, [exported.note, note])))


def safe_name(run_name: str) -> str:
    """The run's name as engines take it in files, model names and command lines: lower case
    letters, digits, '.', '_' and '-', not starting with '-' (Ollama's model names, vLLM's
    ``NAME=PATH``, a Modelfile's ``FROM`` all break on spaces, '=' or ',')."""
    name = re.sub(r"[^a-z0-9._-]+", "-", run_name.lower()).strip("-._")
    return name or "tunelab-model"


def _preflight_gguf(meta: dict, adapter: Path, fmt: str, system: str | None) -> None:
    """What GGUF or a Modelfile cannot hold, refused before any weights are loaded."""
    from transformers import AutoConfig

    from tunelab.export.gguf_file import check_architecture
    from tunelab.models.loading import hub_options
    from tunelab.models.registry import resolve_model

    if meta["method"] == "full":
        config = AutoConfig.from_pretrained(adapter)
    else:
        source = resolve_model(meta["base_model"])
        config = AutoConfig.from_pretrained(source.location, **hub_options(source))
    check_architecture(config)
    if fmt == "ollama" and system and ('"""' in system or system.endswith('"')):
        raise TuneLabError(
            '--format ollama: the run\'s system text contains """, which a Modelfile cannot '
            "quote; export --format gguf and write the SYSTEM line yourself"
        )


def check_request(run_dir: Path, meta: dict, fmt: str, quant: str | None) -> None:
    """Refuse, before any work, what this format cannot hold."""
    if fmt not in FORMATS:
        raise TuneLabError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if quant is not None and quant not in QUANTS:
        raise TuneLabError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    if quant is not None and fmt not in ("gguf", "ollama"):
        raise TuneLabError(f"--quant applies to --format gguf and ollama, not {fmt}")
    if fmt != "hf" and meta.get("head") == "classifier":
        raise TuneLabError(
            f"{run_dir}: a run with a classification head answers through that head, which "
            f"the {fmt} export cannot carry; export --format hf (it loads with "
            f"AutoModelForSequenceClassification) or serve it with `tunelab serve {run_dir}`"
        )
    if fmt != "hf" and meta["method"] in SOFT_PROMPT_METHODS:
        raise TuneLabError(
            f"{run_dir}: a {meta['method']} run learns virtual tokens, which llama.cpp, Ollama "
            f"and vLLM cannot run; serve it with `tunelab serve {run_dir}` (or export --format hf)"
        )


def run_system_text(meta: dict) -> str | None:
    """The system text the run was trained and evaluated with."""
    strategy = PromptStrategy.model_validate(meta.get("strategy") or {})
    return system_text(strategy, meta.get("labels"))


def _write(fmt, meta, adapter, folder, name, quant, system, device, dtype) -> Exported:
    if fmt == "hf":
        from tunelab.export.hf import write_hf

        return Exported(write_hf(meta, adapter, folder, device, dtype, system))
    if fmt == "vllm":
        from tunelab.export.vllm import serve_script, write_vllm

        kind, command = write_vllm(meta, adapter, folder, name, device, dtype)
        script = folder / "serve.sh"
        script.write_text(serve_script(command, system), encoding="utf-8")
        script.chmod(0o755)
        return Exported(kind, f"sh {{out}}/serve.sh   # {shlex.join(command)}")
    return _write_gguf(fmt, meta, adapter, folder, name, quant, system, device, dtype)


def _write_gguf(fmt, meta, adapter, folder, name, quant, system, device, dtype) -> Exported:
    from tunelab.export.gguf_file import write_gguf
    from tunelab.export.ollama import modelfile

    model, tokenizer = merged_model(meta, adapter, device, dtype)
    pre = pre_tokenizer(meta["base_model"])
    gguf_name = f"{name}-{quant}.gguf"
    write_gguf(model, tokenizer, folder / gguf_name, quant=quant, name=name, pre=pre)
    note = None
    if pre == "default":
        note = (
            "llama.cpp will split text with its default pre-tokenizer; TuneLab knows the "
            "exact one only for its registered models"
        )
    what = f"{meta['method']} run as {gguf_name}"
    if fmt == "gguf":
        return Exported(f"{what} for llama.cpp", f"llama-cli -m {{out}}/{gguf_name}", note)
    text = modelfile(
        tokenizer,
        gguf_name,
        name=name,
        system=system,
        task_prefix=meta.get("task_prefix"),
        max_new_tokens=meta.get("max_new_tokens"),
        source=name,
    )
    (folder / "Modelfile").write_text(text, encoding="utf-8")
    command = f"cd {{out}} && ollama create {name} -f Modelfile"
    return Exported(f"{what} + Modelfile", command, note)


def merged_model(meta: dict, adapter: Path, device: str, dtype: str):
    """One model with the run's weights in it: LoRA merged into the base, or the full run."""
    if meta["method"] == "lora":
        from tunelab.export.hf import merged_lora

        return merged_lora(meta, adapter, device, dtype)
    from tunelab.models import load_model

    loaded = load_model(str(adapter), device=device, dtype=dtype)
    return loaded.model, loaded.tokenizer


def pre_tokenizer(base_model: str) -> str:
    """llama.cpp's pre-tokenizer name: read from the embedded model's own GGUF when the run
    is on it, else llama.cpp's default."""
    from tunelab.models import embedded
    from tunelab.models.registry import REGISTERED

    if base_model not in REGISTERED:
        return "default"
    import gguf

    field = gguf.GGUFReader(embedded.gguf_path()).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else "default"
