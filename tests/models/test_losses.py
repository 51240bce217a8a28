"""Losses on known values; the feature loss's mechanics with random VGG weights (no download); the segmentation
loss against PyTorch's cross-entropy and by hand, with ignored pixels that change nothing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from pixelmill.models.losses import (
    VGG16_BN_FILE,
    CharbonnierLoss,
    FeatureLoss,
    FeatureWeightsMissing,
    L1SSIMLoss,
    SegmentationLoss,
    SSIMLoss,
    build_loss,
    gram_matrix,
)


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 64, 64, generator=g)
    pred = (target + 0.1 * torch.randn(1, 3, 64, 64, generator=g)).clamp(0, 1)
    return pred, target


@pytest.fixture(scope="module")
def feature_loss():
    with pytest.warns(UserWarning, match="RANDOM"):
        return FeatureLoss(allow_random=True)


def test_l1_of_constant_offset():
    x = torch.rand(1, 3, 64, 64)
    assert build_loss("l1")(x + 0.1, x).item() == pytest.approx(0.1, abs=1e-6)


def test_charbonnier_known_value():
    x = torch.zeros(1, 3, 8, 8)
    eps = 1e-3
    assert CharbonnierLoss(eps)(x + 0.1, x).item() == pytest.approx(math.sqrt(0.01 + eps**2), rel=1e-6)
    assert CharbonnierLoss(eps)(x, x).item() == pytest.approx(eps, rel=1e-6)


def test_ssim_loss_identical_zero_noisy_positive(pair):
    pred, target = pair
    loss = SSIMLoss()
    assert loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    noisy = loss(pred, target).item()
    assert 0 < noisy <= 2
    pred = pred.clone().requires_grad_(True)
    loss(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_l1_ssim_is_sum(pair):
    pred, target = pair
    combined = build_loss("l1+ssim", ssim_weight=0.5)
    assert isinstance(combined, L1SSIMLoss)
    expected = nn.L1Loss()(pred, target) + 0.5 * SSIMLoss()(pred, target)
    assert combined(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gram_matrix_by_hand():
    # one image, 2 channels, 1x2 pixels: rows of F are [1, 2] and [3, 4]
    x = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    expected = torch.tensor([[[1 + 4, 3 + 8], [3 + 8, 9 + 16]]]) / (2 * 1 * 2)
    torch.testing.assert_close(gram_matrix(x), expected)


def test_feature_loss_zero_identical_positive_otherwise(feature_loss, pair):
    pred, target = pair
    assert feature_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_loss(pred, target).item() > 0
    assert set(feature_loss.metrics) == {"pixel", "feat_0", "feat_1", "feat_2", "gram_0", "gram_1", "gram_2"}
    assert feature_loss.layer_ids == [22, 32, 42]


def test_feature_loss_gradients_reach_pred_not_vgg(feature_loss, pair):
    pred, target = pair
    pred = pred.clone().requires_grad_(True)
    feature_loss(pred, target).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in feature_loss.features.parameters())
    feature_loss.train()
    assert not feature_loss.features.training


def test_feature_loss_is_not_saved(feature_loss):
    assert feature_loss.state_dict() == {}
    assert list(nn.ModuleDict({"crit": feature_loss}).state_dict()) == []
    feature_loss.load_state_dict({})  # strict load of the empty dict works


def test_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FeatureWeightsMissing) as err:
        FeatureLoss()
    msg = str(err.value)
    assert VGG16_BN_FILE in msg and str(tmp_path / "checkpoints") in msg and "feature_weights:" in msg
    with pytest.raises(FeatureWeightsMissing, match="does not exist"):
        build_loss("feature", weights=str(tmp_path / "nope.pth"))


def test_weights_from_path_and_cache(tmp_path, monkeypatch):
    features = make_layers(cfgs["D"], batch_norm=True)  # same keys as vgg16_bn().features, no classifier
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)
    loss = FeatureLoss(weights=str(path))
    torch.testing.assert_close(loss.features[40].weight, state["features.40.weight"])
    torch.testing.assert_close(loss.features[1].running_var, state["features.1.running_var"])
    # the default location: torchvision's file name in <hub dir>/checkpoints
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(features.state_dict(), tmp_path / "hub" / "checkpoints" / VGG16_BN_FILE)  # a features-only dict too
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    torch.testing.assert_close(FeatureLoss().features[0].weight, state["features.0.weight"])


def test_build_loss_names_and_error():
    assert isinstance(build_loss("charbonnier", eps=1e-2), CharbonnierLoss)
    assert isinstance(build_loss("ssim"), SSIMLoss)
    with pytest.raises(ValueError, match="valid names: charbonnier, feature, l1, l1\\+ssim, ssim"):
        build_loss("l2")


# ------------------------------------------------------------------------------------------- segmentation


@pytest.fixture
def seg_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 7, generator=g)
    target = torch.randint(0, 4, (2, 5, 7), generator=g)
    target[0, 0, :3] = 255  # ignored pixels
    return logits, target


def test_segmentation_ce_matches_pytorch(seg_batch):
    logits, target = seg_batch
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0])
    assert SegmentationLoss(ignore_index=255)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-6)
    assert SegmentationLoss(weight=weight, ignore_index=255)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, weight=weight, ignore_index=255).item(), rel=1e-6)


def test_segmentation_ce_by_hand():
    # one pixel, logits (0, log 3): p = (1/4, 3/4)
    logits = torch.tensor([0.0, math.log(3)]).view(1, 2, 1, 1)
    assert SegmentationLoss()(logits, torch.tensor([[[1]]])).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    # focal: (1 - 3/4)**2 * -log(3/4)
    focal = SegmentationLoss(focal_gamma=2)(logits, torch.tensor([[[1]]])).item()
    assert focal == pytest.approx(0.25**2 * -math.log(0.75), rel=1e-5)
    # Dice of class 1, the only one present: 1 - 2 |P.Y| / (|P| + |Y|) = 1 - 2 * 3/4 / (3/4 + 1)
    dice_only = SegmentationLoss(dice=1.0)(logits, torch.tensor([[[1]]])).item() - (-math.log(0.75))
    assert dice_only == pytest.approx(1 - 1.5 / 1.75, abs=1e-5)


@pytest.mark.parametrize("kwargs", [{}, {"dice": 1.0}, {"focal_gamma": 2.0}, {"dice": 0.5, "focal_gamma": 1.0}])
def test_perfect_logits_give_about_zero(kwargs):
    target = torch.tensor([[[0, 1, 2], [2, 1, 3]]])  # 3 ignored
    logits = 50 * F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float()  # (1, 3, 2, 3)
    assert SegmentationLoss(ignore_index=3, **kwargs)(logits, target).item() == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize("kwargs", [{}, {"dice": 1.0}, {"focal_gamma": 2.0},
                                    {"weight": [1.0, 2.0, 0.5, 4.0], "dice": 0.3, "focal_gamma": 1.5}])
def test_ignored_pixels_change_neither_loss_nor_gradient(seg_batch, kwargs):
    logits, target = seg_batch
    loss_fn = SegmentationLoss(ignore_index=255, **kwargs)
    a = logits.clone().requires_grad_(True)
    loss_a = loss_fn(a, target)
    loss_a.backward()
    b = logits.clone()
    b[0, :, 0, :3] = torch.tensor([100.0, -100.0, 7.0, 0.0]).view(4, 1)  # other logits where the target is ignored
    b.requires_grad_(True)
    loss_b = loss_fn(b, target)
    loss_b.backward()
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-6)
    assert torch.equal(a.grad[0, :, 0, :3], torch.zeros(4, 3))
    assert torch.allclose(a.grad, b.grad, atol=1e-7)


def test_segmentation_loss_edge_cases(seg_batch):
    logits, target = seg_batch
    all_ignored = torch.full_like(target, 255)
    x = logits.clone().requires_grad_(True)
    loss = SegmentationLoss(ignore_index=255, dice=1.0)(x, all_ignored)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(x.grad).all()
    # a class of the map as the ignore index (CamVid's Unlabelled)
    inside = SegmentationLoss(ignore_index=3)(logits, target.clamp(max=3))
    keep = target.clamp(max=3) != 3
    want = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target.clamp(max=3)[keep])
    assert inside.item() == pytest.approx(want.item(), rel=1e-6)
    half = SegmentationLoss(ignore_index=255, dice=1.0)(logits.half(), target)  # float32 inside
    assert half.dtype == torch.float32 and torch.isfinite(half)
    with pytest.raises(ValueError, match="weight has 3 values for 4 classes"):
        SegmentationLoss(weight=[1, 1, 1])(logits, target.clamp(max=3))
    with pytest.raises(ValueError, match="expected logits"):
        SegmentationLoss()(logits, target[0])


def test_segmentation_loss_weight_moves_with_the_module_and_is_not_saved():
    loss = SegmentationLoss(weight=[1.0, 2.0], ignore_index=255)
    assert loss.weight.dtype == torch.float32
    assert loss.state_dict() == {}
    # a buffer, so `.to` converts it (a plain attribute would stay float32 on the old device) and keeps its values
    moved = loss.to(torch.float64)
    assert moved.weight.dtype == torch.float64 and moved.weight.tolist() == [1.0, 2.0]
    assert "weight" in dict(moved.named_buffers())
    # and the moved weight is the one the loss uses: class 1 pixels count twice
    logits, target = torch.randn(1, 2, 3, 4, generator=torch.Generator().manual_seed(0)), torch.tensor(
        [[[0, 1, 1, 0], [1, 1, 0, 255], [0, 0, 1, 1]]])
    assert moved(logits.double(), target).item() == pytest.approx(F.cross_entropy(
        logits.double(), target, weight=torch.tensor([1.0, 2.0], dtype=torch.float64), ignore_index=255).item(),
        rel=1e-6)
    assert moved(logits.double(), target).item() != pytest.approx(F.cross_entropy(
        logits.double(), target, ignore_index=255).item(), rel=1e-6)
