"""PSNR / SSIM on known values, BasicSR conventions, and agreement with skimage and the torch version;
the segmentation confusion matrix against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from pixelmill.tasks.training.metrics import ConfusionMatrix, modcrop, psnr, psnr_torch, rgb_to_y, ssim


@pytest.fixture
def img():
    rng = np.random.default_rng(0)
    # smooth content plus texture, so SSIM is meaningful
    yy, xx = np.mgrid[0:48, 0:64]
    base = 128 + 60 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 5.0)[..., None] * np.array([1.0, 0.8, 0.6])
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def test_psnr_known_mse(img):
    a = np.full((16, 16, 3), 100, np.uint8)
    assert psnr(a, a + 5) == pytest.approx(20 * math.log10(255 / 5), abs=1e-12)
    assert psnr(a, a) == float("inf")
    assert psnr(img, img) == float("inf")


def test_psnr_crop_border_removes_border_differences(img):
    b = img.copy()
    b[:2] = 0
    b[:, -2:] = 255
    assert psnr(img, b) < 40
    assert psnr(img, b, crop_border=2) == float("inf")
    assert psnr(img, b, crop_border=2, y_channel=True) == float("inf")
    with pytest.raises(ValueError, match="crop_border"):
        psnr(img, b, crop_border=24)


def test_rgb_to_y_white_black_and_range(img):
    assert rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235, abs=1e-9)
    assert rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16, abs=1e-12)
    y = rgb_to_y(img)
    assert y.dtype == np.float64 and y.shape == img.shape[:2] and y.min() >= 16 and y.max() <= 235
    assert rgb_to_y(img.astype(np.float32)) == pytest.approx(y)


def test_y_channel_psnr_uses_luma():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[..., 1] += 10  # green only: Y changes by 10 * 128.553 / 255
    dy = 10 * 128.553 / 255
    assert psnr(a, b, y_channel=True) == pytest.approx(20 * math.log10(255 / dy), abs=1e-9)


def test_ssim_identical_is_one(img):
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    assert ssim(img, img, y_channel=True, crop_border=4) == pytest.approx(1.0, abs=1e-12)


def test_ssim_decreases_with_noise(img):
    rng = np.random.default_rng(1)
    values = [ssim(img, np.clip(img + rng.normal(0, s, img.shape), 0, 255).astype(np.uint8)) for s in (2, 10, 30)]
    assert 1 > values[0] > values[1] > values[2] > 0


def test_ssim_matches_skimage_on_gray(img):
    rng = np.random.default_rng(2)
    a = rgb_to_y(img)
    b = np.clip(a + rng.normal(0, 8, a.shape), 0, 255)
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    # skimage filters with reflection but averages only the interior 5 px in from every side (its `crop(S, pad)`),
    # which is exactly BasicSR's 'valid' region: the two agree to rounding.
    assert ssim(a, b) == pytest.approx(ref, abs=1e-10)


def test_ssim_rgb_is_channel_mean(img):
    b = np.clip(img.astype(int) + 7 * (np.arange(img.shape[1]) % 3)[:, None], 0, 255).astype(np.uint8)
    per_channel = [ssim(img[..., c], b[..., c]) for c in range(3)]
    assert ssim(img, b) == pytest.approx(np.mean(per_channel), abs=1e-15)


def test_modcrop():
    x = np.zeros((50, 35, 3), np.uint8)
    assert modcrop(x, 4).shape == (48, 32, 3)
    assert modcrop(x[..., 0], 5).shape == (50, 35)


@pytest.mark.parametrize("y_channel", [True, False])
def test_psnr_torch_matches_numpy(img, y_channel):
    rng = np.random.default_rng(3)
    targets = np.stack([img, img[::-1]])  # (2, H, W, 3) uint8
    preds = np.clip(targets / 255 + rng.normal(0, 0.03, targets.shape), 0, 1)  # float predictions in [0, 1]
    t = torch.from_numpy(targets).permute(0, 3, 1, 2).float() / 255
    p = torch.from_numpy(preds).permute(0, 3, 1, 2).float()
    # float path: the same float32 values, scaled by 255, in numpy
    got = psnr_torch(p, t, crop_border=4, y_channel=y_channel)
    p255, t255 = p.permute(0, 2, 3, 1).double().numpy() * 255, t.permute(0, 2, 3, 1).double().numpy() * 255
    want = [psnr(p255[i], t255[i], crop_border=4, y_channel=y_channel) for i in range(2)]
    assert got.shape == (2,) and got.tolist() == pytest.approx(want, abs=1e-4)
    # quantized path: as if the prediction were saved as an 8-bit image
    got_q = psnr_torch(p, t, crop_border=4, y_channel=y_channel, quantize=True)
    p8 = np.clip(np.round(p255), 0, 255).astype(np.uint8)
    want_q = [psnr(p8[i], targets[i], crop_border=4, y_channel=y_channel) for i in range(2)]
    assert got_q.tolist() == pytest.approx(want_q, abs=1e-4)
    assert torch.isinf(psnr_torch(t, t)).all()


# ------------------------------------------------------------------------------------------- confusion matrix

NAN = math.nan
# 4 classes, 3 ignored. Batch 1 pixels (target, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (3,0) (3,2) (0,3);
# the two targets 3 are dropped, the prediction 3 for a target 0 is a miss.
BATCH1 = (torch.tensor([[[0, 0, 1, 1], [2, 3, 3, 0]]]), torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 3]]]))
# Batch 2: class 2 is absent from both targets and predictions.
BATCH2 = (torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]))


def cm_of(*batches, num_classes=4, ignore_index=3):
    cm = ConfusionMatrix(num_classes, ignore_index)
    for target, pred in batches:
        cm.update(pred, target)
    return cm


def assert_metrics(got, miou, global_acc, mean_class_acc, iou, acc):
    assert got["miou"] == pytest.approx(miou, abs=1e-12)
    assert got["global_acc"] == pytest.approx(global_acc, abs=1e-12)
    assert got["mean_class_acc"] == pytest.approx(mean_class_acc, abs=1e-12)
    assert got["iou_per_class"] == pytest.approx(iou, abs=1e-12, nan_ok=True)
    assert got["acc_per_class"] == pytest.approx(acc, abs=1e-12, nan_ok=True)


def test_confusion_matrix_hand_computed_with_an_ignored_class():
    cm = cm_of(BATCH1)
    assert cm.counts().tolist() == [[1, 1, 0, 1], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert cm.matrix.dtype == torch.int64 and cm.matrix.tolist() == cm.counts().tolist()
    # IoU 0: 1 / (3 + 1 - 1); IoU 1: 2 / (2 + 3 - 2); IoU 2: 1 / 1; class 3 is ignored
    assert_metrics(cm.compute(), miou=(1 / 3 + 2 / 3 + 1) / 3, global_acc=4 / 6, mean_class_acc=(1 / 3 + 1 + 1) / 3,
                   iou=[1 / 3, 2 / 3, 1, NAN], acc=[1 / 3, 1, 1, NAN])


def test_a_class_absent_from_targets_and_predictions_is_left_out_of_the_means():
    assert_metrics(cm_of(BATCH2).compute(), miou=(1 / 2 + 0) / 2, global_acc=1 / 2, mean_class_acc=(1 + 0) / 2,
                   iou=[1 / 2, 0, NAN, NAN], acc=[1, 0, NAN, NAN])


def test_a_class_predicted_but_never_present_scores_zero_iou():
    got = cm_of((torch.tensor([[0, 0]]), torch.tensor([[0, 2]]))).compute()
    assert_metrics(got, miou=(1 / 2 + 0) / 2, global_acc=1 / 2, mean_class_acc=1 / 2,
                   iou=[1 / 2, NAN, 0, NAN], acc=[1 / 2, NAN, NAN, NAN])


def test_merge_of_two_accumulators_equals_one_over_both_batches():
    merged = cm_of(BATCH1).merge(cm_of(BATCH2))
    both = cm_of(BATCH1, BATCH2)
    assert np.array_equal(merged.counts(), both.counts())
    # IoU 0: 2 / (4 + 3 - 2); IoU 1: 2 / (3 + 3 - 2); IoU 2: 1 / 1
    assert_metrics(merged.compute(), miou=(2 / 5 + 1 / 2 + 1) / 3, global_acc=5 / 8,
                   mean_class_acc=(2 / 4 + 2 / 3 + 1) / 3, iou=[2 / 5, 1 / 2, 1, NAN], acc=[2 / 4, 2 / 3, 1, NAN])
    assert np.array_equal(ConfusionMatrix(4, 3).merge(cm_of(BATCH1)).counts(), cm_of(BATCH1).counts())


def test_any_batching_gives_the_same_counts():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 6, (6, 9, 11), generator=g)  # 5 ignored
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.7, target.clamp(max=4),
                       torch.randint(0, 5, target.shape, generator=g))
    whole = cm_of((target, pred), num_classes=5, ignore_index=5)
    parts = [cm_of((target[i:i + 2], pred[i:i + 2]), num_classes=5, ignore_index=5) for i in range(0, 6, 2)]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert np.array_equal(whole.counts(), merged.counts())
    assert whole.counts().sum() == int((target != 5).sum())
    valid = target != 5
    assert whole.compute()["global_acc"] == pytest.approx(float((pred == target)[valid].float().mean()))


def test_ignore_index_past_the_classes_and_errors():
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 255, 2]))
    assert cm.counts().sum() == 3
    assert cm.compute()["iou_per_class"] == pytest.approx([1 / 2, 1, 0])
    with pytest.raises(ValueError, match="target value 7 is not a class"):
        cm.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(ValueError, match="pred value -1 is not a class"):
        cm.update(torch.tensor([-1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="argmax"):
        cm.update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot merge"):
        cm.merge(ConfusionMatrix(3, ignore_index=2))


def test_nothing_counted_is_nan_and_reset_forgets():
    empty = ConfusionMatrix(3).compute()
    assert all(math.isnan(empty[k]) for k in ("miou", "global_acc", "mean_class_acc"))
    cm = cm_of(BATCH1)
    cm.update(torch.tensor([3]), torch.tensor([3]))  # only an ignored pixel: nothing changes
    assert cm.counts().sum() == 6
    cm.reset()
    assert cm.counts().sum() == 0 and math.isnan(cm.compute()["miou"])
