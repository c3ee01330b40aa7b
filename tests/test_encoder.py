"""The encoder is torchvision's VGG family cut before the last max-pool (no network needed)."""

from __future__ import annotations

import pytest
import torch

from captioner.encoder import VGG_CONFIGS, Encoder


def test_layer_configs_are_torchvisions():
    from torchvision.models import vgg

    assert VGG_CONFIGS == {"vgg11": vgg.cfgs["A"], "vgg13": vgg.cfgs["B"], "vgg16": vgg.cfgs["D"],
                           "vgg19": vgg.cfgs["E"]}


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"])
def test_state_dict_layout_matches_torchvision(name):
    from torchvision.models import vgg

    letter = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}[name.replace("_bn", "")]
    theirs = vgg.make_layers(vgg.cfgs[letter], batch_norm=name.endswith("_bn"))
    ours = Encoder(name).features
    assert len(ours) == len(theirs) - 1                     # only the last max-pool is cut
    assert isinstance(theirs[-1], torch.nn.MaxPool2d)
    their_shapes = {k: v.shape for k, v in theirs.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == their_shapes


def test_torchvision_weights_load_and_give_the_same_features():
    from torchvision.models import vgg

    torch.manual_seed(0)
    theirs = vgg.make_layers(vgg.cfgs["A"], batch_norm=False).eval()
    state = {f"features.{k}": v for k, v in theirs.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4096, 25088)   # ignored, as in a full torchvision file
    encoder = Encoder("vgg11").eval()
    encoder.load_torchvision_state_dict(state)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = theirs[:-1](image).flatten(2).transpose(1, 2)
        assert torch.allclose(encoder(image), expected, atol=1e-5)


def test_vgg19_gives_196_annotation_vectors_of_512_at_224():
    encoder = Encoder("vgg19").eval()
    with torch.no_grad():
        annotations = encoder(torch.randn(1, 3, 224, 224))
    assert annotations.shape == (1, 196, 512)


def test_weights_for_another_architecture_are_refused_with_a_clear_message():
    encoder = Encoder("vgg11")
    wrong = {f"features.{k}": v for k, v in Encoder("vgg13").features.state_dict().items()}
    with pytest.raises(ValueError, match="do not fit vgg11"):
        encoder.load_torchvision_state_dict(wrong)


def test_constructing_an_encoder_never_touches_the_network(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    Encoder("vgg16")
