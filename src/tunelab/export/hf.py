"""``--format hf``: a trained run as a standard Hugging Face folder.

LoRA is merged into the base weights (no PEFT needed to load it); a full fine-tune is saved
as it is. A soft prompt cannot be folded into weights, so the folder holds the base model,
the PEFT adapter in ``soft_prompt/`` and ``load_soft_prompt.py``, which loads both. Either
way ``AutoModelForCausalLM.from_pretrained(folder)`` loads; a run with a classification head
loads with ``AutoModelForSequenceClassification`` (its labels in the config's ``id2label``).
"""

import json
import shutil
from pathlib import Path

from tunelab.training.artifacts import META_FILE

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
SYSTEM = {system!r}  # the system text the run was trained and evaluated with
MAX_NEW_TOKENS = {max_new_tokens!r}


def load():
    base = AutoModelForCausalLM.from_pretrained(HERE)
    model = PeftModel.from_pretrained(base, HERE / "{soft_prompt}").eval()
    return model, AutoTokenizer.from_pretrained(HERE)


if __name__ == "__main__":
    model, tokenizer = load()
    question = " ".join(sys.argv[1:]) or "Hello"
    if TASK_PREFIX and not question.startswith(TASK_PREFIX):
        question = f"{{TASK_PREFIX}} {{question}}"
    messages = [{{"role": "system", "content": SYSTEM}}] if SYSTEM else []
    messages.append({{"role": "user", "content": question}})
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS or 128, do_sample=False)
    print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
'''


def write_hf(
    meta: dict, adapter: Path, folder: Path, device: str, dtype: str, system: str | None
) -> str:
    """Write the Hugging Face folder into ``folder``; returns what kind of folder it is."""
    classifier = meta.get("head") == "classifier"
    if not (adapter / "adapter_config.json").is_file():
        shutil.copytree(adapter, folder, dirs_exist_ok=True)  # full weights already
        return "full weights" + (" with a classification head" if classifier else "")
    if classifier:
        from tunelab.training.artifacts import load_trained_run

        trained = load_trained_run(adapter.parent, device=device, dtype=dtype)
        trained.model.save_pretrained(folder)
        trained.tokenizer.save_pretrained(folder)
        return "LoRA and its classification head merged (AutoModelForSequenceClassification)"
    if meta["method"] == "lora":
        model, tokenizer = merged_lora(meta, adapter, device, dtype)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return "LoRA merged into the base weights"
    _soft_prompt(meta, adapter, folder, device, dtype, system)
    return f"base weights + {meta['method']} in {SOFT_PROMPT_DIR}/ (load_soft_prompt.py)"


def merged_lora(meta: dict, adapter: Path, device: str, dtype: str):
    """The base model with the run's LoRA update folded into its weights, and its tokenizer."""
    from peft import PeftModel

    from tunelab.models import load_model

    base = load_model(meta["base_model"], device=device, dtype=dtype)
    return PeftModel.from_pretrained(base.model, adapter).merge_and_unload(), base.tokenizer


def _soft_prompt(
    meta: dict, adapter: Path, folder: Path, device: str, dtype: str, system: str | None
) -> None:
    from tunelab.models import load_model

    base = load_model(meta["base_model"], device=device, dtype=dtype)
    base.model.save_pretrained(folder)
    base.tokenizer.save_pretrained(folder)
    shutil.copytree(adapter, folder / SOFT_PROMPT_DIR, ignore=shutil.ignore_patterns(META_FILE))
    # The adapter config names the base it was trained on; point it at this folder instead.
    config_path = folder / SOFT_PROMPT_DIR / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "."
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    loader = LOADER.format(
        prefix=meta.get("task_prefix"),
        system=system,
        max_new_tokens=meta.get("max_new_tokens"),
        soft_prompt=SOFT_PROMPT_DIR,
    )
    (folder / "load_soft_prompt.py").write_text(loader, encoding="utf-8")
