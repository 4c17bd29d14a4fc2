"""Write a Llama-architecture Hugging Face model as one GGUF file (llama.cpp, Ollama).

Built on the ``gguf`` package alone (its tensor-name map, writer and quantisers), so no
llama.cpp checkout or build is needed. What goes in, following llama.cpp's own converter:

- hyperparameters under ``llama.*`` and the tokenizer under ``tokenizer.ggml.*`` (byte-level
  BPE: tokens, token types, merges, special ids, the chat template);
- weights renamed to llama.cpp's names (``model.layers.0.self_attn.q_proj.weight`` →
  ``blk.0.attn_q.weight``); the rows of the query and key projections are reordered from the
  half-split rotary layout of Hugging Face to llama.cpp's interleaved one (per head, shape
  ``(heads, 2, head_dim/2, in)`` → ``(heads, head_dim/2, 2, in)``); transformers undoes this
  when it loads a GGUF;
- 2-D weights as f16 or q8_0, 1-D ones (norms) as f32, as llama.cpp expects.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunelab.errors import TuneLabError

QUANTS = ("f16", "q8_0")
BYTE_LEVEL_ALPHABET_SIZE = 256
# llama.cpp token types (gguf.TokenType): what each vocabulary entry is.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass(frozen=True)
class TokenizerMetadata:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos, eos, unk, padding
    add_bos: bool
    chat_template: str | None
    pre: str  # llama.cpp's pre-tokenizer name


def check_architecture(config) -> None:
    """Refuse, in one line, a model this writer would get wrong."""
    if config.model_type != "llama":
        raise TuneLabError(
            f"GGUF export writes Llama-architecture models; this one is {config.model_type!r}. "
            "Export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise TuneLabError(
            f"GGUF export: rope scaling {rope['rope_type']!r} is not written by TuneLab; "
            "export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise TuneLabError("GGUF export: Llama models with bias terms are not written by TuneLab")


def write_gguf(model, tokenizer, path: Path, *, quant: str, name: str, pre: str) -> None:
    """Write ``model`` (a merged ``LlamaForCausalLM``) and its tokenizer to ``path``."""
    import gguf

    if quant not in QUANTS:
        raise TuneLabError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    config = model.config
    check_architecture(config)
    vocab = tokenizer_metadata(tokenizer, config.vocab_size, pre)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_hyperparameters(writer, config, name, quant)
    _add_tokenizer(writer, vocab)
    for tensor_name, data, raw_dtype in _tensors(model, quant):
        writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_hyperparameters(writer, config, name: str, quant: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 1e4))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_type[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(writer, vocab: TokenizerMetadata) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    else:  # an empty array is not stored; scores tell readers there is nothing to merge
        writer.add_token_scores([0.0] * len(vocab.tokens))
    for kind, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def tokenizer_metadata(tokenizer, vocab_size: int, pre: str) -> TokenizerMetadata:
    """llama.cpp's description of a byte-level BPE tokenizer (GPT-2 style, as SmolLM, Llama 3
    and Qwen use); any other kind is refused."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model, decoder = backend.get("model") or {}, backend.get("decoder") or {}
    if model.get("type") != "BPE" or not _is_byte_level(decoder):
        raise TuneLabError(
            "GGUF export writes byte-level BPE tokenizers (GPT-2 style); this model's is "
            f"{model.get('type')} with a {decoder.get('type')} decoder. Export --format hf and "
            "convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size:
        raise TuneLabError(
            f"GGUF export: the tokenizer has {len(by_id)} tokens but the model's embedding "
            f"only {vocab_size} rows"
        )
    added = {item["content"]: item for item in backend.get("added_tokens", [])}
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:  # embedding rows beyond the tokenizer: padding, never produced
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(CONTROL if added[token].get("special") else USER_DEFINED)
        else:
            tokens.append(token)
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
    }
    return TokenizerMetadata(
        tokens=tokens,
        token_types=types,
        merges=merges,
        special_ids={k: v for k, v in special.items() if v is not None},
        add_bos=bool(getattr(tokenizer, "add_bos_token", False)),
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
        pre=pre,
    )


def _is_byte_level(decoder: dict) -> bool:
    if decoder.get("type") == "ByteLevel":
        return True
    return any(_is_byte_level(d) for d in decoder.get("decoders", []) or [])


def _tensors(model, quant: str):
    """(llama.cpp name, data, GGML type or None) for every weight the file needs."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TuneLabError(f"GGUF export: no llama.cpp name for the weight {hf_name!r}")
        data = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = interleave_rotary_rows(data, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = interleave_rotary_rows(data, config.num_key_value_heads)
        yield (name, *_encode(data, quant))


def interleave_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder a query/key projection's output rows from Hugging Face's rotary layout (each
    head's first half then second half) to llama.cpp's (the two halves interleaved)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _encode(data: np.ndarray, quant: str):
    import gguf

    if data.ndim == 1:
        return data.astype(np.float32), None
    if quant == "f16":
        return data.astype(np.float16), None
    if data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
        return data.astype(np.float16), None  # rows that do not split into q8_0 blocks
    quantized = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    return quantized, gguf.GGMLQuantizationType.Q8_0
