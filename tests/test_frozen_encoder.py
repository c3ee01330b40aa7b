"""A frozen pretrained encoder stays frozen in training: its batch-norm running statistics (and any
dropout) are those of eval mode, whole encoder or the blocks --finetune-encoder leaves alone."""

from __future__ import annotations

import torch
from real_data_fixtures import one_thread  # noqa: F401
from torch import nn

from captioner import cli
from captioner.encoder import VGG_CONFIGS, make_layers


def bn_weights_file(path):
    """A torchvision-layout vgg11_bn state_dict with random weights and made-up running statistics
    (so that any update shows)."""
    torch.manual_seed(3)
    features = make_layers(VGG_CONFIGS["vgg11"], batch_norm=True)
    for m in features.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    weights = {f"features.{k}": v for k, v in features.state_dict().items()}
    torch.save(weights, path)
    return weights


def train_shapes(tmp_path, capsys, name, *extra):
    out = tmp_path / name
    code = cli.train_main([str(a) for a in [
        "--dataset", "shapes", "--out-dir", out, "--encoder", "vgg11_bn", "--image-size", "32",
        "--encoder-dim", "512", "--hidden-dim", "32", "--embed-dim", "16", "--attention-dim", "16",
        "--train-images", "16", "--val-images", "4", "--eval-images", "4", "--batch-size", "4", "--steps", "3",
        "--eval-every", "2", "--no-progress", *extra]])
    err = capsys.readouterr().err
    assert code == 0, err
    return torch.load(out / "last.pt", weights_only=True)["state_dict"]


def running_statistics(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)
            and k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


def test_frozen_batch_norm_encoder_keeps_its_running_statistics_bit_for_bit(tmp_path, capsys, one_thread):
    weights = bn_weights_file(tmp_path / "vgg11_bn.pth")
    saved = train_shapes(tmp_path, capsys, "frozen", "--encoder-weights", tmp_path / "vgg11_bn.pth")
    stats = running_statistics(saved, "encoder.")
    assert stats and len(stats) == len(running_statistics(weights, ""))
    for k, v in stats.items():
        assert torch.equal(v, weights[k]), k


def test_finetune_encoder_keeps_the_frozen_blocks_statistics_and_trains_the_last_block(tmp_path, capsys,
                                                                                        one_thread):
    from captioner.encoder import Encoder

    weights = bn_weights_file(tmp_path / "vgg11_bn.pth")
    saved = train_shapes(tmp_path, capsys, "finetune", "--encoder-weights", tmp_path / "vgg11_bn.pth",
                         "--finetune-encoder")
    encoder = Encoder("vgg11_bn")
    last = {id(m) for m in encoder.last_block()}
    trained = {f"features.{i}" for i, m in enumerate(encoder.features) if id(m) in last}
    frozen_seen = trained_seen = 0
    for k, v in running_statistics(saved, "encoder.").items():
        if k.rsplit(".", 1)[0] in trained:          # the fine-tuned block: batch norm in train mode
            trained_seen += 1
            if k.endswith("num_batches_tracked"):
                assert v > weights[k], k
        else:
            frozen_seen += 1
            assert torch.equal(v, weights[k]), k
    assert frozen_seen and trained_seen


def test_train_mode_leaves_frozen_encoder_parts_in_eval_mode_and_the_rest_in_train_mode(make_model):
    model = make_model(encoder="vgg_tiny_bn")
    layers = list(model.encoder.features)
    for m in layers[:4]:                             # freeze the first conv + batch norm
        m.requires_grad_(False)
    model.train()
    assert model.decoder.training and model.encoder.training
    bn = [m for m in layers if isinstance(m, nn.BatchNorm2d)]
    assert not bn[0].training and all(m.training for m in bn[1:])
    model.encoder.requires_grad_(False)              # the whole encoder frozen
    model.eval()
    model.train()
    assert not model.encoder.training and not any(m.training for m in model.encoder.modules())
    assert model.decoder.training and model.decoder.dropout.training
    model.eval()
    assert not any(m.training for m in model.modules())
