"""Export a trained run as a standard Hugging Face folder.

LoRA is merged into the base weights (no PEFT needed to load it); a full fine-tune is saved
as it is. A soft prompt cannot be folded into weights, so the folder holds the base model,
the PEFT adapter in ``soft_prompt/`` and ``load_soft_prompt.py``, which loads both. Either
way ``AutoModelForCausalLM.from_pretrained(folder)`` loads, and ``tunelab.json`` keeps the task
prefix and prompt strategy the run was trained with. The folder appears atomically.
"""

import json
import shutil
from pathlib import Path

from tunelab.paths import atomic_directory
from tunelab.runs import check_out, claim, user_entries
from tunelab.training.artifacts import ADAPTER_DIR, META_FILE, read_meta

SOFT_PROMPT_DIR = "soft_prompt"
LOADER = '''"""Load this exported TuneLab run: the base model with its trained soft prompt.

    python load_soft_prompt.py "Your question"
"""

import sys
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
TASK_PREFIX = {prefix!r}


def load():
    base = AutoModelForCausalLM.from_pretrained(HERE)
    model = PeftModel.from_pretrained(base, HERE / "{soft_prompt}").eval()
    return model, AutoTokenizer.from_pretrained(HERE)


if __name__ == "__main__":
    model, tokenizer = load()
    question = " ".join(sys.argv[1:]) or "Hello"
    if TASK_PREFIX and not question.startswith(TASK_PREFIX):
        question = f"{{TASK_PREFIX}} {{question}}"
    prompt = tokenizer.apply_chat_template(
        [{{"role": "user", "content": question}}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=128, do_sample=False)
    print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
'''


def export_run(run_dir: Path, out: Path, device: str = "cpu", dtype: str = "float32") -> str:
    """Write the export to ``out``; returns what kind of folder it is.

    ``out`` must be new, empty or an earlier export (:func:`tunelab.runs.check_out`); an
    earlier export is replaced in one step, keeping any file a user added to it.
    """
    meta = read_meta(run_dir)
    adapter = run_dir / ADAPTER_DIR
    check_out(out, "export")
    with atomic_directory(out, keep=user_entries(out)) as scratch:
        if not (adapter / "adapter_config.json").is_file():
            shutil.copytree(adapter, scratch, dirs_exist_ok=True)  # full weights already
            kind = "full weights"
        elif meta["method"] == "lora":
            _merged_lora(meta, adapter, scratch, device, dtype)
            kind = "LoRA merged into the base weights"
        else:
            _soft_prompt(meta, adapter, scratch, device, dtype)
            kind = f"base weights + {meta['method']} in {SOFT_PROMPT_DIR}/ (load_soft_prompt.py)"
        (scratch / META_FILE).write_text(json.dumps({**meta, "exported_from": str(run_dir)},
                                                    indent=2))  # fmt: skip
        claim(scratch, "export", files=sorted(entry.name for entry in scratch.iterdir()))
    return kind


def _merged_lora(meta: dict, adapter: Path, folder: Path, device: str, dtype: str) -> None:
    from peft import PeftModel

    from tunelab.models import load_model

    base = load_model(meta["base_model"], device=device, dtype=dtype)
    merged = PeftModel.from_pretrained(base.model, adapter).merge_and_unload()
    merged.save_pretrained(folder)
    base.tokenizer.save_pretrained(folder)


def _soft_prompt(meta: dict, adapter: Path, folder: Path, device: str, dtype: str) -> None:
    from tunelab.models import load_model

    base = load_model(meta["base_model"], device=device, dtype=dtype)
    base.model.save_pretrained(folder)
    base.tokenizer.save_pretrained(folder)
    shutil.copytree(adapter, folder / SOFT_PROMPT_DIR, ignore=shutil.ignore_patterns(META_FILE))
    # The adapter config names the base it was trained on; point it at this folder instead.
    config_path = folder / SOFT_PROMPT_DIR / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "."
    config_path.write_text(json.dumps(config, indent=2))
    loader = LOADER.format(prefix=meta.get("task_prefix"), soft_prompt=SOFT_PROMPT_DIR)
    (folder / "load_soft_prompt.py").write_text(loader)
