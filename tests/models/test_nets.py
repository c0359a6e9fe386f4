"""Networks: shapes, size of the tiny config, ControlNet zero-initialisation and freezing, IF-style UNets."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from dequant.models.nets import ConcatUNet, ControlNetUNet, HintEmbedding

# Two shared cores: one intra-op thread avoids oversubscription stalls that cost 100x on tiny convs.
torch.set_num_threads(1)

TINY = dict(sample_size=16, block_out_channels=(16, 32), attention_levels=(False, True), norm_num_groups=8)


def _tiny_unet(if_style: bool = False) -> UNet2DConditionModel:
    """A random UNet2DConditionModel small enough for CPU tests; `if_style` mimics IF-II's interface."""
    kw = dict(
        sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, attention_head_dim=4,
    )
    if if_style:
        kw.update(in_channels=6, out_channels=6, encoder_hid_dim=16, encoder_hid_dim_type="text_proj",
                  addition_embed_type="text", addition_embed_type_num_heads=4, class_embed_type="timestep")
    else:
        kw.update(in_channels=3, out_channels=3)
    torch.manual_seed(0)
    return UNet2DConditionModel(**kw)


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("unet")
    _tiny_unet().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def if_unet_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("if_unet")
    _tiny_unet(if_style=True).save_pretrained(path)
    return path


def _inputs(b: int = 2, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, size, size, generator=g)
    hint = torch.rand(b, 7, size, size, generator=g) * 2 - 1
    t = torch.randint(0, 1000, (b,), generator=g)
    return x, t, hint


def test_concat_forward_shape_and_gradients():
    net = ConcatUNet(**TINY)
    x, t, hint = _inputs()
    out = net(x, t, hint)
    assert out.shape == (2, 3, 16, 16)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.trainable_module().parameters())
    assert net.unet.config.in_channels == 10 and net.unet.config.out_channels == 3


def test_concat_tiny_is_under_a_million_parameters():
    n = sum(p.numel() for p in ConcatUNet(**TINY).parameters())
    assert 10_000 < n < 1_000_000


def test_concat_block_types_follow_attention_levels():
    net = ConcatUNet(sample_size=16, block_out_channels=(8, 16, 32), attention_levels=(False, False, True))
    assert net.unet.config.down_block_types == ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    assert net.unet.config.up_block_types == ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")


def test_concat_rejects_bad_arguments():
    with pytest.raises(ValueError, match="attention_levels"):
        ConcatUNet(block_out_channels=(16, 32), attention_levels=(False,))
    with pytest.raises(ValueError, match="norm_num_groups"):
        ConcatUNet(block_out_channels=(12, 32), attention_levels=(False, False), norm_num_groups=8)
    net = ConcatUNet(**TINY)
    x, t, hint = _inputs()
    with pytest.raises(ValueError, match="hint"):
        net(x, t, hint[:, :5])
    with pytest.raises(ValueError, match="t must"):
        net(x, t[:1], hint)


def test_concat_hydra_config_rebuilds_same_architecture():
    net = ConcatUNet(**TINY)
    node = net.hydra_config()
    assert node["_target_"] == "dequant.models.nets.ConcatUNet"
    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    clone = ConcatUNet(**kwargs)
    assert clone.state_dict().keys() == net.state_dict().keys()


def test_hint_embedding_keeps_resolution_and_starts_at_zero():
    emb = HintEmbedding(7, (48, 64, 96, 128), 32)
    widths = [emb.conv_in.out_channels] + [b.out_channels for b in emb.blocks]
    assert widths == [48, 48, 64, 64, 96, 96, 128]
    assert all(c.stride == (1, 1) for c in [emb.conv_in, *emb.blocks, emb.conv_out])
    out = emb(torch.rand(1, 7, 12, 20))
    assert out.shape == (1, 32, 12, 20)
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("if_style", [False, True])
def test_controlnet_starts_as_the_frozen_unet(unet_dir, if_unet_dir, if_style):
    net = ControlNetUNet(if_unet_dir if if_style else unet_dir, conditioning_channels=(8, 16),
                         null_embedding_path="zeros")
    x, t, hint = _inputs()
    out = net(x, t, hint)
    assert out.shape == (2, 3, 16, 16)
    b = x.shape[0]
    sample = torch.cat([x, hint[:, :3]], dim=1) if if_style else x
    labels = torch.zeros(b, dtype=torch.long) if if_style else None
    with torch.no_grad():
        ref = net.unet(sample, t, encoder_hidden_states=net.null_embedding.expand(b, -1, -1), class_labels=labels)
    assert torch.equal(out.detach(), ref.sample[:, :3])
    zero_convs = [*net.controlnet.controlnet_down_blocks, net.controlnet.controlnet_mid_block,
                  net.controlnet.controlnet_cond_embedding.conv_out]
    assert all(torch.count_nonzero(p) == 0 for conv in zero_convs for p in conv.parameters())


def test_controlnet_unet_is_frozen_and_controlnet_learns(unet_dir):
    net = ControlNetUNet(unet_dir, conditioning_channels=(8, 16), null_embedding_path="zeros")
    assert net.trainable_module() is net.controlnet
    assert not any(p.requires_grad for p in net.unet.parameters())
    net.train()
    assert net.controlnet.training and not net.unet.training
    x, t, hint = _inputs()
    net(x, t, hint).square().mean().backward()
    assert all(p.grad is None for p in net.unet.parameters())
    assert torch.count_nonzero(net.controlnet.controlnet_down_blocks[0].weight.grad) > 0
    assert torch.count_nonzero(net.controlnet.controlnet_mid_block.weight.grad) > 0
    # Everything behind the zero convs sees no gradient on the very first step: ControlNet's defining property.
    assert torch.count_nonzero(net.controlnet.controlnet_cond_embedding.conv_out.weight.grad) == 0


def test_controlnet_hint_reaches_the_output_once_zero_convs_move(unet_dir):
    net = ControlNetUNet(unet_dir, conditioning_channels=(8, 16), null_embedding_path="zeros")
    with torch.no_grad():
        for p in net.controlnet.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    x, t, hint = _inputs()
    with torch.no_grad():
        a, b = net(x, t, hint), net(x, t, -hint)
    assert (a - b).abs().max() > 1e-4


def test_controlnet_unfrozen_trains_both(unet_dir):
    net = ControlNetUNet(unet_dir, conditioning_channels=(8, 16), freeze_unet=False,
                         null_embedding_path="zeros")
    names = {n.split(".")[0] for n, _ in net.trainable_module().named_parameters()}
    assert names == {"unet", "controlnet"}
    assert all(p.requires_grad for p in net.unet.parameters())


def test_controlnet_null_embedding_from_file(unet_dir, tmp_path):
    emb = torch.randn(3, 8)
    torch.save(emb, tmp_path / "null.pt")
    net = ControlNetUNet(unet_dir, conditioning_channels=(8, 16), null_embedding_path=tmp_path / "null.pt")
    assert torch.equal(net.null_embedding, emb[None])
    assert "null_embedding" in dict(net.named_buffers())
    torch.save(torch.randn(3, 5), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="null_embedding_path"):
        ControlNetUNet(unet_dir, conditioning_channels=(8, 16), null_embedding_path=tmp_path / "bad.pt")


def test_controlnet_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_unet"
    with pytest.raises(ValueError, match="pretrained_path.*no_such_unet"):
        ControlNetUNet(missing)
