"""Symmetry graphs of transformers: attention written with ``F.scaled_dot_product_attention``,
``nn.MultiheadAttention`` and rotary embeddings, norm folding, and third-party models built
from configs (Hugging Face transformers; timm and torchvision where they import). Every graph
is checked by transforming each group by its widest kind and comparing outputs in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import landscape as ls
from landscape.core.errors import LandscapeError
from landscape.symmetry import PerHead, SymmetryCheckError, random_transform, symmetry_graph


class SdpaBlock(nn.Module):
    """A pre-norm block whose attention calls F.scaled_dot_product_attention, separate q/k/v."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(3, dim)
        self.norm = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.final = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        n, t, d = h.shape
        z = self.norm(h)
        q, k, v = (p(z).view(n, t, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.o(att.transpose(1, 2).reshape(n, t, d))
        return self.head(self.final(h))


class MhaBlock(nn.Module):
    """nn.MultiheadAttention with its packed in-projection (as torchvision's ViT)."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        z = self.norm(h)
        a, _ = self.attn(z, z, z, need_weights=False)
        return self.head(h + a)


class RMSNorm(nn.Module):
    """RMSNorm written out in elementwise operations (as Hugging Face's Llama does)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(dim) + 0.5)
        self.eps = 1e-6

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RotaryBlock(nn.Module):
    """Rotary position embeddings in the rotate-half convention, RMSNorm written out."""

    def __init__(self, dim: int = 8, heads: int = 2, context: int = 6) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(3, dim)
        self.norm = RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.head = nn.Linear(dim, 5)
        hd = dim // heads
        freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        angles = torch.arange(context).float()[:, None] * freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    @staticmethod
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        n, t, d = h.shape
        z = self.norm(h)
        q, k, v = self.qkv(z).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        cos, sin = self.cos[:t], self.sin[:t]
        q = q * cos + self.rotate_half(q) * sin
        k = k * cos + self.rotate_half(k) * sin
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        att = torch.softmax(scores, dim=-1) @ v
        return self.head(h + self.o(att.transpose(1, 2).reshape(n, t, d)))


class UnbindBlock(nn.Module):
    """timm's attention: one packed projection, reshaped to (3, heads, dim) and unbound."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(3, dim)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        b, n, c = h.shape
        qkv = self.qkv(self.norm(h)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        att = F.scaled_dot_product_attention(q, k, v)
        return self.head(h + self.proj(att.transpose(1, 2).reshape(b, n, c)))


def kinds(graph) -> dict[str, str]:
    return {g.name: g.kind for g in graph.groups.values()}


def test_sdpa_gives_heads_per_head_maps_and_an_orthogonal_stream(device) -> None:
    torch.manual_seed(0)
    model = SdpaBlock()
    graph = symmetry_graph(model, torch.randn(2, 4, 3))
    found = graph.groups
    assert kinds(graph) == {"embed": "orthogonal", "heads": "permutation", "qk": "invertible", "vo": "invertible"}
    assert found["qk"].per == "heads" and found["vo"].per == "heads" and found["heads"].per is None
    assert found["embed"].centered  # a LayerNorm reads the stream: maps must keep the all-ones vector
    # keys transform by the inverse transpose of the queries' maps
    assert graph.layouts["k.weight"][0].children[1].dual and not graph.layouts["q.weight"][0].children[1].dual
    assert [f.weight for f in graph.folds] == ["norm.weight", "final.weight"]
    result = graph.check(model, kind="max", trials=2, device=device)
    assert result.attrs["passed"] and float(result.deviation.max()) < 1e-9


def test_packed_projection_unbound_gives_queries_keys_and_values_groups_of_their_own() -> None:
    # The (3, heads, dim) axis is only ever indexed: its three slots are separate tensors, so the
    # packed rows are the concatenation of queries, keys and values (not one map three times).
    torch.manual_seed(0)
    model = UnbindBlock()
    graph = symmetry_graph(model, torch.randn(2, 4, 3))
    assert kinds(graph) == {"embed": "orthogonal", "heads": "permutation", "qk": "invertible", "vo": "invertible"}
    rows = graph.layouts["qkv.weight"][0]
    assert isinstance(rows, ls.symmetry.Sum) and len(rows.children) == 3
    graph.check(model, kind="max", trials=2)


def test_transforms_the_graph_forbids_change_the_function() -> None:
    torch.manual_seed(0)
    model = SdpaBlock()
    graph = symmetry_graph(model, torch.randn(2, 4, 3))
    g = torch.Generator().manual_seed(1)
    wrong = {
        "embed": random_transform(8, "orthogonal", g),  # moves the all-ones vector: LayerNorm breaks
        "qk": PerHead([random_transform(4, "invertible", g), random_transform(4, "orthogonal", g)], "heads"),
    }
    with pytest.raises(SymmetryCheckError, match="'embed'"):
        graph.check(model, transforms={"embed": wrong["embed"]})
    with pytest.raises(LandscapeError, match="all-ones"):
        graph.apply(ls.state_of(model), {"embed": wrong["embed"]})
    # per-head invertible maps are fine, a random map on the stream is not
    graph.check(model, transforms={"qk": wrong["qk"]})
    with pytest.raises(SymmetryCheckError):
        graph.check(model, transforms={"embed": random_transform(8, "invertible", g)})


def test_norms_keep_restricts_the_stream_to_permutations() -> None:
    torch.manual_seed(0)
    model = SdpaBlock()
    graph = symmetry_graph(model, torch.randn(2, 4, 3), norms="keep")
    assert kinds(graph)["embed"] == "permutation" and not graph.folds
    graph.check(model, kind="max")


def test_folding_is_exact_and_unfold_restores_the_gains() -> None:
    torch.manual_seed(0)
    model = SdpaBlock()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 2.0)
        model.norm.bias.normal_()
    graph = symmetry_graph(model, torch.randn(2, 4, 3))
    state = ls.state_of(model)
    folded = graph.fold(state)
    assert torch.equal(folded["norm.weight"], torch.ones(8))
    # by hand: q's input columns scaled by the gain, the bias divided by it
    assert torch.allclose(folded["q.weight"], state["q.weight"] * state["norm.weight"][None, :])
    assert torch.allclose(folded["norm.bias"], state["norm.bias"] / state["norm.weight"])
    x = torch.randn(3, 4, 3)
    ref = model(x)
    assert torch.allclose(torch.func.functional_call(model, dict(folded), (x,)), ref, atol=1e-5)
    back = graph.unfold(folded, like=state)
    assert all(torch.allclose(back[k], state[k], atol=1e-6) for k in state)


def test_multihead_attention_packed_projection(device) -> None:
    torch.manual_seed(0)
    model = MhaBlock().eval()
    graph = symmetry_graph(model, torch.randn(2, 4, 3))
    names = kinds(graph)
    assert (
        names["attn.heads"] == "permutation" and names["attn.qk"] == "invertible" and names["attn.vo"] == "invertible"
    )
    assert names["embed"] == "orthogonal"
    assert graph.folds[0].consumers == [("attn.in_proj_weight", 1)]
    graph.check(model, kind="max", trials=2, device=device)


def test_rotary_embeddings_allow_only_maps_that_commute_with_the_rotations(device) -> None:
    torch.manual_seed(0)
    model = RotaryBlock()
    graph = symmetry_graph(model, torch.randn(2, 6, 3))
    qk = next(g for g in graph.groups.values() if g.rotary)
    assert qk.kind == "invertible" and qk.per is not None
    stream = graph.groups["embed"]
    assert stream.kind == "orthogonal" and not stream.centered  # RMSNorm: any orthogonal map
    graph.check(model, kind="max", trials=2, device=device)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(SymmetryCheckError):
        graph.check(model, transforms={qk.name: random_transform(qk.size, "invertible", g)})
    with pytest.raises(LandscapeError, match="rotary"):
        graph.apply(ls.state_of(model), {qk.name: random_transform(qk.size, "orthogonal", g)})


def test_check_cannot_pass_vacuously() -> None:
    model = ls.models.create("mlp", width=8, depth=2, seed=0)
    state = ls.state_of(model)
    graph = symmetry_graph(model)
    dead = dict(state)
    dead["classifier.weight"] = torch.zeros_like(state["classifier.weight"])  # logits are the bias alone
    with pytest.raises(LandscapeError, match="depend on its input"):
        graph.check(model, dead)
    # Tiny outputs (a random MobileNetV3 has logits ~3e-10) are tested relative to their scale:
    # the symmetries pass, and a map that is not one (an orthogonal map through a ReLU) fails,
    # where an absolute tolerance of 1e-5 would have let everything through.
    tiny = dict(state)
    tiny["classifier.weight"] = state["classifier.weight"] * 1e-10
    tiny["classifier.bias"] = state["classifier.bias"] * 1e-10
    result = graph.check(model, tiny)
    assert result.attrs["scale"] < 1e-8 and result.attrs["passed"]
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(SymmetryCheckError, match=r"features\.fc1"):
        graph.check(model, tiny, transforms={"features.fc1": q})


HF_MODELS = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", {"n_embd": 16, "n_layer": 1, "n_head": 2, "vocab_size": 40, "n_positions": 16, "bos_token_id": 0, "eos_token_id": 0}, "ids"),
    "gpt2-untied": ("GPT2LMHeadModel", "GPT2Config", {"n_embd": 16, "n_layer": 1, "n_head": 2, "vocab_size": 40, "n_positions": 16, "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": False}, "ids"),
    "llama": ("LlamaForCausalLM", "LlamaConfig", {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40, "max_position_embeddings": 16}, "ids"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40, "max_position_embeddings": 16}, "ids"),
    "mistral": ("MistralForCausalLM", "MistralConfig", {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40, "max_position_embeddings": 16}, "ids"),
    "vit": ("ViTForImageClassification", "ViTConfig", {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "image_size": 8, "patch_size": 4, "num_channels": 1, "num_labels": 3}, "image"),
    "bert": ("BertForSequenceClassification", "BertConfig", {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 40, "max_position_embeddings": 16, "num_labels": 3}, "ids"),
}  # fmt: skip
# What the widest maps of the residual stream are: GPT-2 ties its output layer to the token
# embedding behind the last LayerNorm (the gain cannot fold into a tied weight: permutations);
# BERT normalises the stream itself after every block (post-norm: permutations).
STREAM = {"gpt2": "permutation", "gpt2-untied": "orthogonal", "llama": "orthogonal", "qwen2": "orthogonal",
          "mistral": "orthogonal", "vit": "orthogonal", "bert": "permutation"}  # fmt: skip


def hf_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    transformers = pytest.importorskip("transformers")
    model_cls, config_cls, config, kind = HF_MODELS[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config)).eval()
    x = torch.randint(0, 40, (2, 6)) if kind == "ids" else torch.randn(2, 1, 8, 8)
    return model, x


@pytest.mark.parametrize("name", list(HF_MODELS))
def test_hugging_face_models_built_from_configs(name: str) -> None:
    model, x = hf_model(name)
    graph = symmetry_graph(model, x)
    assert graph.frontend == "export"  # torch.fx cannot trace them
    groups = list(graph.groups.values())
    assert groups[0].kind == STREAM[name]
    heads = [g for g in groups if g.name.endswith(".heads")]
    qk = [g for g in groups if g.name.endswith(".qk")]
    vo = [g for g in groups if g.name.endswith(".vo")]
    assert heads and qk and vo
    assert all(g.kind == "invertible" and g.per is not None for g in qk + vo)
    assert all(g.rotary for g in qk) == (name in ("llama", "qwen2", "mistral"))
    # Llama-style models compute their norms in float32 even in a float64 model: 1e-6 relative
    result = graph.check(model, kind="max", trials=1, rtol=1e-5)
    assert result.attrs["passed"]


@pytest.mark.parametrize("name", ["gpt2-untied", "llama"])
def test_hugging_face_models_align_without_glue(name: str) -> None:
    from landscape.alignment import align

    model, x = hf_model(name)
    other, _ = hf_model(name)
    torch.manual_seed(1)
    for p in other.parameters():
        p.data.normal_(0, 0.02)
    graph = symmetry_graph(model, x)
    moved = graph.apply(ls.state_of(model), graph.random_transforms(seed=1, kind="max"))
    result = align(model, model, moved, graph=graph, progress=False)
    aligned = result.apply(moved)
    state = ls.state_of(model)
    assert result.distance_after < 1e-3 * result.distance_before
    assert all(torch.allclose(aligned[k], state[k], atol=1e-3) for k in state)
    align(model, model, other, graph=graph, max_iter=2, progress=False)  # independent weights: runs


def _import_or_skip(module: str):
    try:
        return __import__(module)
    except Exception as err:  # torchvision/timm fail to import with some torch builds
        pytest.skip(f"{module} does not import here ({type(err).__name__})")


def test_torchvision_vision_transformer() -> None:
    _import_or_skip("torchvision")
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=8, patch_size=4, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    )
    graph = symmetry_graph(model.eval(), torch.randn(2, 3, 8, 8))
    assert any(g.name.endswith(".qk") and g.per for g in graph.groups.values())
    graph.check(model, kind="max")


def test_timm_vision_transformer() -> None:
    timm = _import_or_skip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=8,
        embed_dim=16,
        depth=1,
        num_heads=2,
        num_classes=3,
    )
    graph = symmetry_graph(model.eval(), torch.randn(2, 3, 16, 16))
    assert any(g.name.endswith(".qk") and g.per for g in graph.groups.values())
    graph.check(model, kind="max")
