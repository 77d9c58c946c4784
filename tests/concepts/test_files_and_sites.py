"""llama.cpp control vectors read back with the gguf package; sites of other architectures
against plain forward passes; the final norm as a layer; the hidden-state cache; load_lm's
dtype and device_map; no code from a model folder; validated probe files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, make_arch, make_model, make_tokenizer

from landscape.concepts import (
    export_control_vector,
    find_layers,
    fit_probe,
    guide,
    hidden_states,
    load_control_vector,
    load_lm,
    load_probe,
    perplexity,
)
from landscape.core.errors import LandscapeError

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def residual_probe(llama):
    return fit_probe(hidden_states(*llama, EXAMPLES, site="residual", progress=False), val_fraction=0)


def _logits(lm, ids):
    with torch.no_grad():
        return lm(ids).logits


def test_control_vector_file_as_llama_cpp_reads_it(llama, residual_probe, tmp_path):
    lm, tok = llama
    path = export_control_vector(residual_probe, tmp_path / "cv.gguf", alpha=0.5, layers=[1, 2])
    reader = gguf.GGUFReader(str(path))
    text = {key: bytes(reader.get_field(key).parts[-1]).decode() for key in ("general.architecture",)}
    assert text["general.architecture"] == "controlvector"
    assert bytes(reader.get_field("controlvector.model_hint").parts[-1]).decode() == "llama"
    assert int(reader.get_field("controlvector.layer_count").parts[-1][0]) == 2
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.2"]
    for layer in (1, 2):
        j = residual_probe.layers_.tolist().index(layer)
        expected = 0.5 * residual_probe.mean_norm_[j] * residual_probe.direction(layer)
        assert tensors[f"direction.{layer}"].dtype == np.float32 and tensors[f"direction.{layer}"].shape == (32,)
        np.testing.assert_allclose(tensors[f"direction.{layer}"], expected, rtol=1e-6, atol=1e-7)
    # llama.cpp adds each vector to its block's output at every position: as guide without
    # norm preservation.
    ids = torch.tensor([tok("How was it?").input_ids])
    with guide(lm, load_control_vector(path), preserve_norm=False):
        from_file = _logits(lm, ids)
    with guide(lm, residual_probe, alpha=0.5, layers=[1, 2], preserve_norm=False):
        direct = _logits(lm, ids)
    torch.testing.assert_close(from_file, direct, rtol=1e-5, atol=1e-5)


def test_a_control_vector_written_as_repeng_writes_it_loads(llama, tmp_path):
    lm, tok = llama
    rng = np.random.default_rng(0)
    directions = {1: rng.normal(size=32).astype(np.float32), 2: rng.normal(size=32).astype(np.float32)}
    writer = gguf.GGUFWriter(str(tmp_path / "repeng.gguf"), "controlvector")  # repeng's export_gguf, step by step
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", len(directions))
    for layer, vector in directions.items():
        writer.add_tensor(f"direction.{layer}", vector)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    vector = load_control_vector(tmp_path / "repeng.gguf")
    assert vector.layers == [1, 2] and vector.model_hint == "llama" and vector.site == "residual"
    np.testing.assert_array_equal(vector.vectors[2], directions[2])
    ids = torch.tensor([tok("Hi").input_ids])
    blocks = find_layers(lm)

    def adder(v):
        return lambda m, a, out: (out[0] + v, *out[1:]) if isinstance(out, tuple) else out + v

    handles = [blocks[layer].register_forward_hook(adder(torch.as_tensor(3.0 * directions[layer]))) for layer in (1, 2)]
    try:
        expected = _logits(lm, ids)
    finally:
        for h in handles:
            h.remove()
    with guide(lm, vector, alpha=3.0, preserve_norm=False):
        torch.testing.assert_close(_logits(lm, ids), expected, rtol=1e-5, atol=1e-5)


def test_control_vector_errors(llama, residual_probe, tmp_path):
    lm, tok = llama
    pre_attn = fit_probe(hidden_states(lm, tok, EXAMPLES, progress=False), val_fraction=0)
    with pytest.raises(LandscapeError, match="site='residual'"):
        export_control_vector(pre_attn, tmp_path / "x.gguf")
    with pytest.raises(LandscapeError, match=r"direction\.0"):
        export_control_vector(residual_probe, tmp_path / "x.gguf", layers=[0, 1])
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(LandscapeError, match=r"junk\.gguf"):
        load_control_vector(tmp_path / "junk.gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "zero.gguf"), "controlvector")
    writer.add_tensor("direction.0", np.ones(4, dtype=np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(LandscapeError, match="layer >= 1"):
        load_control_vector(tmp_path / "zero.gguf")
    assert not (tmp_path / "x.gguf").exists()


def _plain_hidden(lm, ids):
    with torch.no_grad():
        return lm(torch.tensor([ids]), output_hidden_states=True).hidden_states


def test_final_layer_lines_up_with_output_hidden_states(lm_pair):
    lm, tok = lm_pair
    reps = hidden_states(lm, tok, ["abc def", "xyz"], layers=[0, -1, "final"], site="residual", progress=False)
    assert reps.layer.values.tolist() == [0, 2, 3]
    states = _plain_hidden(lm, tok("abc def").input_ids)
    np.testing.assert_allclose(reps.values[0, 0], states[1][0, -1].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reps.values[0, 2], states[-1][0, -1].numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(LandscapeError, match="'residual' for layer 'final'"):
        hidden_states(lm, tok, ["abc"], layers="final", site="pre_attn", progress=False)


@pytest.mark.parametrize("arch", ["opt", "olmo2", "mamba", "gpt_neox", "phi"])
def test_sites_of_other_architectures(arch):
    """Each site against a plain forward pass with a hook on the module that defines it."""
    lm, tok = make_arch(arch, layers=3), make_tokenizer(chat=False)
    blocks = find_layers(lm)
    texts = ["abc def", "xy"]
    ids = tok(texts[0]).input_ids
    attention = {
        "opt": "self_attn",
        "olmo2": "self_attn",
        "mamba": "mixer",
        "gpt_neox": "attention",
        "phi": "self_attn",
    }
    mlp = {"opt": "fc2", "olmo2": "mlp", "gpt_neox": "mlp", "phi": "mlp"}
    seen = {}
    module = getattr(blocks[1], attention[arch])
    handles = [
        module.register_forward_pre_hook(
            lambda m, a, k: seen.__setitem__("pre_attn", (a[0] if a else k["hidden_states"]).clone()), with_kwargs=True
        ),
        module.register_forward_hook(
            lambda m, a, o: seen.__setitem__("attn_out", (o[0] if isinstance(o, tuple) else o).clone())
        ),
    ]
    if arch in mlp:
        handles.append(
            getattr(blocks[1], mlp[arch]).register_forward_hook(
                lambda m, a, o: seen.__setitem__("mlp_out", (o[0] if isinstance(o, tuple) else o).clone())
            )
        )
    try:
        states = _plain_hidden(lm, ids)
    finally:
        for h in handles:
            h.remove()
    seen["residual"] = states[1 if arch == "mamba" else 2]  # Mamba's list starts at block 0, not the embeddings
    for site, expected in seen.items():
        expected = expected.reshape(1, -1, expected.shape[-1])  # OPT's MLP sees (batch * length, hidden)
        reps = hidden_states(lm, tok, texts, layers=[1], site=site, progress=False)
        np.testing.assert_allclose(reps.values[0, 0], expected[0, -1].numpy(), rtol=1e-4, atol=1e-5, err_msg=site)
    if arch == "olmo2":  # no pre-norm: attention reads the residual stream itself
        np.testing.assert_allclose(seen["pre_attn"].numpy(), states[1].numpy(), rtol=1e-6)
    if arch == "mamba":
        with pytest.raises(LandscapeError, match=r"has \['residual', 'pre_attn', 'attn_out'\]"):
            hidden_states(lm, tok, texts, site="mlp_out", progress=False)


@pytest.mark.parametrize("arch", ["mamba", "opt"])
def test_guided_perplexity_on_other_architectures(arch):
    lm, tok = make_arch(arch), make_tokenizer(chat=False)
    texts = [("What is it", "a list of things"), ("Why", "because")]
    values = perplexity(lm, tok, texts, batch_size=2)
    for i, (prompt, completion) in enumerate(texts):
        prefix = tok("").input_ids + tok(prompt, add_special_tokens=False).input_ids
        ids = torch.tensor([prefix + tok(" " + completion, add_special_tokens=False).input_ids])
        with torch.no_grad():
            logits = lm(ids).logits[0]
        nll = torch.nn.functional.cross_entropy(logits[len(prefix) - 1 : -1], ids[0, len(prefix) :])
        assert float(values[i]) == pytest.approx(float(torch.exp(nll)), rel=1e-5)
    probe = fit_probe(hidden_states(lm, tok, EXAMPLES, site="residual", progress=False), val_fraction=0)
    with guide(lm, probe, alpha=5.0, positions="new"):
        guided = perplexity(lm, tok, texts)
    assert np.isfinite(guided.values).all() and not np.allclose(guided.values, values.values)


def test_hidden_state_cache_skips_the_model(llama, tmp_path):
    lm, tok = llama
    first = hidden_states(lm, tok, EXAMPLES, cache=tmp_path, progress=False)
    calls = []
    handle = find_layers(lm)[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        again = hidden_states(lm, tok, EXAMPLES, cache=tmp_path, progress=False)
        other = hidden_states(lm, tok, EXAMPLES, read="mean", cache=tmp_path, progress=False)
    finally:
        handle.remove()
    np.testing.assert_array_equal(again.values, first.values)
    np.testing.assert_array_equal(again.mean_norm.values, first.mean_norm.values)
    assert again.attrs["site"] == first.attrs["site"] and again.label.values.tolist() == first.label.values.tolist()
    assert len(calls) > 0 and other.attrs["read"] == "mean"  # another read is another key
    assert len(list(tmp_path.glob("hidden-*.nc"))) == 2
    changed = make_model("llama", seed=1)
    calls.clear()
    hidden_states(changed, tok, EXAMPLES, cache=tmp_path, progress=False)  # other weights: computed
    assert len(list(tmp_path.glob("hidden-*.nc"))) == 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_model("llama").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def test_load_lm_dtype_and_device_map(model_dir):
    lm, _ = load_lm(model_dir, dtype="float64")
    assert all(p.dtype == torch.float64 for p in lm.parameters())
    lm, _ = load_lm(model_dir, dtype=torch.bfloat16, device_map="cpu")
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in lm.parameters())
    with pytest.raises(LandscapeError, match="torch dtype"):
        load_lm(model_dir, dtype="float128")


def test_code_in_a_model_folder_never_runs(model_dir, tmp_path):
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(model_dir, folder)
    marker = tmp_path / "pwned"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (folder / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="evil",
        auto_map={
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LandscapeError, match="never runs code"):
        load_lm(folder)
    assert not marker.exists()
    # A known architecture that also names custom code loads transformers' own class only.
    config.update(model_type="llama")
    (folder / "config.json").write_text(json.dumps(config))
    lm, _ = load_lm(folder)
    assert type(lm).__module__.startswith("transformers.") and not marker.exists()


def _saved_probe(tmp_path, residual_probe):
    return residual_probe.save(tmp_path / "probe.safetensors")


def _rewrite(path, *, tensors=None, meta=None, drop_meta=()):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        raw_meta = dict(f.metadata())
        data = {k: f.get_tensor(k) for k in f.keys()}
    data.update(tensors or {})
    raw_meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (meta or {}).items()})
    for key in drop_meta:
        raw_meta.pop(key)
    save_file(data, str(path), metadata=raw_meta)


def _bad_cases(probe):
    d = torch.from_numpy(probe.directions_.copy())
    n = d.shape[0]
    nan = d.clone()
    nan[0, 0] = float("nan")
    layers = torch.from_numpy(probe.layers_.copy())
    return {
        "nan direction": ({"tensors": {"directions": nan}}, "directions"),
        "zero direction": ({"tensors": {"directions": d * 0}}, "unit-length"),
        "long direction": ({"tensors": {"directions": d * 2}}, "unit-length"),
        "wrong width": (
            {"tensors": {"directions": torch.nn.functional.normalize(torch.ones(n, 7), dim=1)}},
            "hidden_size",
        ),
        "negative norm": ({"tensors": {"mean_norm": -torch.ones(n, dtype=torch.float64)}}, "mean_norm"),
        "nan norm": ({"tensors": {"mean_norm": torch.full((n,), float("nan"), dtype=torch.float64)}}, "mean_norm"),
        "duplicate layers": ({"tensors": {"layers": torch.zeros_like(layers)}}, "unique, sorted"),
        "unsorted layers": ({"tensors": {"layers": layers.flip(0)}}, "unique, sorted"),
        "short coef": ({"tensors": {"coef": torch.ones(n - 1, dtype=torch.float64)}}, "coef"),
        "accuracy above 1": (
            {"tensors": {"train_accuracy": torch.full((n,), 2.0, dtype=torch.float64)}},
            "train_accuracy",
        ),
        "unknown kind": ({"meta": {"kind": "svm"}}, "kind"),
        "no kind": ({"drop_meta": ("kind",)}, "'kind'"),
        "seed not an int": ({"meta": {"seed": "zero"}}, "'seed'"),
        "C negative": ({"meta": {"C": -1}}, "'C'"),
        "bad site": ({"meta": {"site": "everywhere"}}, "'site'"),
        "hidden size a string": ({"meta": {"hidden_size": "wide"}}, "hidden_size"),
        "layer beyond the model": ({"meta": {"n_model_layers": 1}}, "layers up to 1"),
    }


@pytest.mark.parametrize("case", [
    "nan direction", "zero direction", "long direction", "wrong width", "negative norm", "nan norm",
    "duplicate layers", "unsorted layers", "short coef", "accuracy above 1", "unknown kind", "no kind",
    "seed not an int", "C negative", "bad site", "hidden size a string", "layer beyond the model",
])  # fmt: skip
def test_load_probe_validates_every_field(residual_probe, tmp_path, case):
    path = _saved_probe(tmp_path, residual_probe)
    assert load_probe(path).layers_.tolist() == residual_probe.layers_.tolist()
    change, match = _bad_cases(residual_probe)[case]
    _rewrite(path, **change)
    with pytest.raises(LandscapeError, match=match) as caught:
        load_probe(path)
    assert "probe.safetensors" in str(caught.value)
