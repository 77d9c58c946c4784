"""Tiny randomly initialised Llama and GPT-2 models with a character-level tokenizer, built
here (no download)."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def make_tokenizer(*, chat: bool = True, pad: bool = True, bos: bool = False):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>" if pad else None,
        additional_special_tokens=SPECIALS[4:],
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_model(arch: str, *, hidden: int = 32, layers: int = 3, seed: int = 0):
    vocab = len(SPECIALS) + 96
    torch.manual_seed(seed)
    if arch == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
        )
        model = transformers.LlamaForCausalLM(config)
        # Random init leaves the residual stream tiny next to the embeddings; larger weights
        # make every layer matter, so that steering effects are far above float rounding.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(8.0)
    else:
        config = transformers.GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, bos_token_id=1, eos_token_id=2
        )
        model = transformers.GPT2LMHeadModel(config)
    return model.eval()


def chat_prefix(tokenizer, prompt: str) -> list[int]:
    """The ids of a prompt rendered as a user turn: transformers 4.x returns a list from
    ``apply_chat_template(tokenize=True)``, 5.x a BatchEncoding."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    if hasattr(rendered, "keys") and "input_ids" in rendered:
        rendered = rendered["input_ids"]
    return list(rendered)


def make_arch(name: str, *, hidden: int = 32, layers: int = 2, seed: int = 0):
    """A tiny model of another family, from its config (random weights)."""
    vocab = len(SPECIALS) + 96
    ids = {"pad_token_id": 3, "bos_token_id": 1, "eos_token_id": 2}
    configs = {
        "opt": lambda: transformers.OPTConfig(
            vocab_size=vocab, hidden_size=hidden, ffn_dim=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=hidden, **ids,
        ),
        "olmo2": lambda: transformers.Olmo2Config(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, max_position_embeddings=256, **ids,
        ),
        "mamba": lambda: transformers.MambaConfig(
            vocab_size=vocab, hidden_size=hidden, state_size=4, num_hidden_layers=layers, **ids
        ),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, max_position_embeddings=256, **ids,
        ),
        "phi": lambda: transformers.PhiConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, max_position_embeddings=256, **ids,
        ),
    }  # fmt: skip
    try:
        config = configs[name]()
    except AttributeError:  # an architecture newer than this transformers (OLMo-2 needs 4.47)
        pytest.skip(f"transformers {transformers.__version__} has no {name}")
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="session")
def llama():
    return make_model("llama"), make_tokenizer()


@pytest.fixture(scope="session")
def gpt2():
    # GPT-2 style: no chat template, no pad token, a BOS token put before every text.
    return make_model("gpt2"), make_tokenizer(chat=False, pad=False, bos=True)


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def lm_pair(request, llama, gpt2):
    return llama if request.param == "llama" else gpt2


EXAMPLES = [
    ("How was it?", "Wonderful, truly great.", 1),
    ("How was it?", "Awful, truly bad.", 0),
    ("And the food?", "Lovely!", 1),
    ("And the food?", "Horrible and cold.", 0),
    ("Your trip?", "Joyful days.", 1),
    ("Your trip?", "Sad days, all of them.", 0),
    ("The film?", "Great fun", 1),
    ("The film?", "Dull", 0),
]


def hook_counts(lm) -> list[tuple[int, int]]:
    """Forward hooks and pre-hooks per module. transformers 5 installs its own hooks on the
    first output_hidden_states call and keeps them, so tests compare counts, not emptiness."""
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in lm.modules()]
