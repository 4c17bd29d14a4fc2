"""``--format vllm``: a folder that ``vllm serve`` takes as it is, and the command to run.

A LoRA run keeps its adapter unmerged (vLLM serves many adapters on one copy of the base, as
``tunelab serve`` does): ``base/`` holds the base model, ``adapters/NAME/`` the PEFT adapter,
and ``serve.sh`` the ``vllm serve ./base --enable-lora --lora-modules NAME=./adapters/NAME``
line. A full fine-tune is a plain model folder, ``model/``.
"""

import json
import shlex
import shutil
from pathlib import Path

from tunelab.errors import TuneLabError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
# vLLM accepts only these values for --max-lora-rank (its default is 16).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def write_vllm(meta: dict, adapter: Path, folder: Path, name: str, device: str, dtype: str):
    """Fill ``folder``; returns (what kind of export it is, the serve command's arguments)."""
    from tunelab.models import load_model

    if meta["method"] == "full":
        shutil.copytree(adapter, folder / "model")
        command = ["vllm", "serve", "./model", "--served-model-name", name]
        return "a full fine-tune as a plain model folder", command
    base = load_model(meta["base_model"], device=device, dtype=dtype)
    base.model.save_pretrained(folder / "base")
    base.tokenizer.save_pretrained(folder / "base")
    target = folder / "adapters" / name
    target.mkdir(parents=True)
    for file in ADAPTER_FILES:
        if (adapter / file).is_file():
            shutil.copy2(adapter / file, target / file)
    config_path = target / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "./base"  # this folder's base, not the training path
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    command = ["vllm", "serve", "./base", "--served-model-name", "base",
               "--enable-lora", "--lora-modules", f"{name}=./adapters/{name}"]  # fmt: skip
    rank = next((r for r in VLLM_LORA_RANKS if r >= config.get("r", 16)), None)
    if rank is None:
        raise TuneLabError(
            f"--format vllm: LoRA rank {config['r']} is above the largest vLLM serves "
            f"({VLLM_LORA_RANKS[-1]})"
        )
    if rank > 16:
        command += ["--max-lora-rank", str(rank)]
    return f"base model + LoRA adapter {name!r} for vLLM", command


def serve_script(command: list[str], system: str | None) -> str:
    lines = [
        "#!/bin/sh",
        "# Serve this TuneLab export with vLLM (an OpenAI-compatible server on port 8000).",
    ]
    if system:
        lines.append(
            "# Send system_prompt.txt as the system message: the run was evaluated with it."
        )
    lines += ['cd "$(dirname "$0")"', "exec " + shlex.join(command) + ' "$@"']
    return "\n".join(lines) + "\n"
