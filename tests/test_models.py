from __future__ import annotations

import pytest
import torch

import landscape as ls
from landscape.core.errors import LandscapeError
from landscape.models import create, from_spec, parse_spec, spec_of
from tests.conftest import ZOO_INPUTS, zoo_data


@pytest.mark.parametrize("name", sorted(ZOO_INPUTS))
def test_zoo_models_have_features_and_classifier_and_rebuild_from_spec(name: str) -> None:
    kwargs, _ = ZOO_INPUTS[name]
    model = create(name, seed=3, **kwargs)
    x, _ = zoo_data(name, n=4)
    with torch.no_grad():
        assert torch.equal(model(x), model.classifier(model.features(x)))
    rebuilt = from_spec(spec_of(model), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()))


@pytest.mark.parametrize("norm", ["batch", "layer", "group", "none"])
def test_resnet_norms_and_1d_inputs(norm: str) -> None:
    model = create("resnet", input_shape=(40,), norm=norm, width_multiplier=2, seed=0)
    assert model(torch.randn(3, 40)).shape == (3, 10)


def test_seeded_creation_leaves_the_global_generator_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    create("mlp", seed=5)
    assert torch.equal(torch.rand(1), expected)


def test_spec_parsing() -> None:
    assert parse_spec("mlp:width=128,depth=2") == {"name": "mlp", "width": 128, "depth": 2}
    assert parse_spec('{"name": "cnn1d", "width": 8}')["width"] == 8
    assert parse_spec("resnet:input_shape=1x8x8,norm=layer")["input_shape"] == [1, 8, 8]
    with pytest.raises(LandscapeError, match="key=value"):
        parse_spec("mlp:128")


def test_unknown_model_or_argument_is_explained() -> None:
    with pytest.raises(LandscapeError, match=r"create\(name=...\).*'mlp'"):
        create("transformer9000")
    with pytest.raises(LandscapeError, match=r"create\(widht=...\).*width"):
        create("mlp", widht=3)
    with pytest.raises(LandscapeError, match=r"mlp\(norm=...\)"):
        create("mlp", norm="weird")


def test_models_train_mode_is_off_after_create() -> None:
    assert not ls.models.create("resnet").training
