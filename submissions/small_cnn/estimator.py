"""Small 3D U-Net: learn what a lesion looks like from patches.

Idea
----
The starting kit thresholds intensities; the voxel classifier learns from
features that a person chose. A convolutional network *learns* its features:
shape, texture, context (a dark blob in the white matter is suspicious, a dark
ventricle is not). This is a classic 3D U-Net, kept small (351k parameters) so
that it trains on a laptop CPU in minutes:

1. Each T1w volume is average-pooled from 1 mm to 2 mm voxels (8 times fewer
   voxels to compute on) and z-scored inside the head. The network sees three
   channels: the image; its left-right mirror (most strokes are one-sided, so a
   lesion looks unlike its mirror, while ventricles and sulci are about
   symmetric); and the MNI152 template, which shows what a healthy brain looks
   like at each place (the data are registered to it). The mask is pooled the
   same way, into the *fraction* of each 2 mm voxel that is lesion.
2. Training sees random 32-voxel patches; half of them are centred on a lesion
   voxel, so that the rare lesion voxels are not drowned in healthy tissue.
   Light augmentation: left-right flips (the template is symmetric), small
   intensity scaling and shifts, a little noise.
3. The loss is Dice (what we are scored on) plus binary cross-entropy (smooth,
   well-behaved gradients for every voxel).
4. Prediction runs the network once on the box around the head (batch
   normalization makes this possible: after training it is a fixed scaling);
   larger inputs are cut into overlapping windows blended with Gaussian
   weights. The probabilities are then upsampled back to 1 mm (trilinear).

Scores and cost (default synthetic sample, 40 train / 16 test, 1 mm, 2-core CPU)
-----------------------------------------------------------------------------
CV Dice 0.683 ± 0.072, test Dice 0.714 (lesion-wise F1 0.92, volume
difference 0.7 mL): the best of the three baselines. Full ``ramp-test``
(5 folds): 1400 s (23 min) on 2 CPU cores, peak memory 1.5 GB.
``ramp-test --quick-test``: 109 s; its 16 training steps only check that
everything runs (Dice 0). Each fold trains 480 steps of 8 patches (about
0.47 s a step), then tunes its threshold (it picks 0.2 to 0.25, not 0.5).

In development, tuning the threshold raised the CV Dice from 0.58 to 0.68, and
batch instead of instance normalization raised one fold's validation Dice (at
2 mm, after 400 steps) from 0.58 to 0.70. On a CUDA GPU (H100) an epoch takes
1.05 s instead of 2.30 s on 16 CPU cores, and CUDA and CPU predictions from
the same weights agree within 1e-3; see ``bench/check_cnn_cuda.py``.

Try next
--------
* Test-time augmentation: average the predictions of the image and of its
  left-right flip (twice the prediction cost).
* Train longer (``EPOCHS``): in development, validation Dice was still rising
  at 600 steps.
* With a GPU: a wider network (``BASE_CHANNELS``), or 1 mm patches around the
  lesions (``WORKING_VOXEL_MM = 1``) for sharper borders.
"""

import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from nilearn.datasets import struct
from nilearn.image import load_img, resample_img
from torch import nn

from atlas_ramp.testmode import is_quick_test

# ``ramp-test --quick-test`` sets RAMP_TEST_MODE: train just enough to run.
QUICK_TEST = is_quick_test()

# --- Training budget: the knobs to turn first --------------------------------
EPOCHS = 2 if QUICK_TEST else 20
PATCHES_PER_EPOCH = 64 if QUICK_TEST else 192
BATCH_SIZE = 8  # patches per optimization step
PATCH_SIZE = 32  # voxels per side at the working resolution; a multiple of 8
LEARNING_RATE = 1e-3  # Adam; with cosine decay to 0 over the training

# --- Model and data -----------------------------------------------------------
WORKING_VOXEL_MM = 2.0  # train and predict on 2 mm voxels (1 mm data pooled by 2)
BASE_CHANNELS = 8  # channels of the first level; doubled at each of 3 poolings
MIRROR_CHANNEL = True  # also give the network the left-right mirrored image
TEMPLATE_CHANNEL = True  # and the MNI152 template: what a healthy brain looks like
LESION_PATCH_FRACTION = 0.5  # share of patches centred on a lesion voxel
WINDOW_SIZE = 128  # window side at prediction: the whole head at 2 mm
WINDOW_OVERLAP = 0.25  # overlap of neighbouring sliding windows at prediction
WINDOWS_PER_BATCH = 4  # sliding windows computed together
# The network is cautious: at p >= 0.5 its lesions are too small. After training,
# the decision threshold is tuned on this many training subjects, among THRESHOLDS,
# and the probabilities are shifted so that it becomes 0.5 (what is scored).
N_CALIBRATION_SUBJECTS = 8
THRESHOLDS = (0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
SEED = 0

# Repeatable CUDA convolutions. (Set here, not in fit: cloudpickle cannot
# pickle a method that refers to torch.backends.cudnn.)
torch.backends.cudnn.benchmark = False
torch.backends.cudnn.deterministic = True


# =============================================================================
# The network
# =============================================================================
class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by batch norm and leaky ReLU."""

    def __init__(self, in_channels, out_channels):
        layers = []
        for channels in (in_channels, out_channels):
            layers += [
                # No bias: the normalization that follows would cancel it.
                nn.Conv3d(channels, out_channels, 3, padding=1, bias=False),
                # Batch normalization: at prediction it is a fixed scaling, so
                # the network can look at the whole head in one pass. (Instance
                # normalization, per patch, learned more slowly here and needs
                # patch-sized windows at prediction.)
                nn.BatchNorm3d(out_channels),
                nn.LeakyReLU(0.01, inplace=True),
            ]
        super().__init__(*layers)


class UNet3D(nn.Module):
    """A 3D U-Net: 4 levels, skip connections, one output channel (logits).

    Parameters
    ----------
    in_channels : int
        Input channels (the image, and maybe its mirror image).
    base_channels : int
        Channels at full resolution; doubled at each pooling.
    depth : int
        Number of levels (``depth - 1`` poolings by 2), so input sides must be
        multiples of ``2 ** (depth - 1)``.
    """

    def __init__(self, in_channels=1, base_channels=8, depth=4):
        super().__init__()
        channels = [base_channels * 2**level for level in range(depth)]
        inputs = [in_channels] + channels[:-1]
        self.encoder = nn.ModuleList(
            ConvBlock(inputs[level], channels[level]) for level in range(depth)
        )
        # Upsampling by a learned 2x2x2 transposed convolution, then a block
        # that mixes the upsampled features with the skip connection.
        self.upsample = nn.ModuleList(
            nn.ConvTranspose3d(channels[level + 1], channels[level], 2, stride=2)
            for level in range(depth - 1)
        )
        self.decoder = nn.ModuleList(
            ConvBlock(2 * channels[level], channels[level])
            for level in range(depth - 1)
        )
        self.head = nn.Conv3d(channels[0], 1, 1)
        # Start by predicting about 2% lesion everywhere, roughly the share of
        # lesion voxels in the patches. From the default 50% the first hundred
        # steps would only learn that the background is background.
        nn.init.constant_(self.head.bias, -4.0)

    def forward(self, x):
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < len(self.encoder) - 1:
                skips.append(x)
                x = F.max_pool3d(x, 2)
        for level in reversed(range(len(self.decoder))):
            x = self.upsample[level](x)
            x = self.decoder[level](torch.cat([skips[level], x], dim=1))
        return self.head(x)


def count_parameters(network):
    return sum(parameter.numel() for parameter in network.parameters())


# =============================================================================
# Images: normalization, resampling, padding
# =============================================================================
def downsample(volume, factor):
    """Average blocks of ``factor`` voxels per axis (a smaller block at odd edges)."""
    volume = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    if factor > 1:
        volume = F.avg_pool3d(volume[None, None], factor, ceil_mode=True)[0, 0]
    return volume.numpy()


def head_mask(volume):
    """Voxels inside the head: above a tenth of the bright-tissue intensity."""
    return volume > 0.1 * np.percentile(volume, 99)


def z_score(volume, values):
    """``volume`` in standard deviations from the mean of ``values``."""
    return (volume - values.mean()) / max(float(values.std()), 1e-6)


def template_on_grid(affine, shape, factor):
    """The MNI152 template on the data's grid, pooled and z-scored like an image.

    The data are registered to MNI space, so the template shows, voxel by voxel,
    what a healthy brain looks like there: a dark voxel where the template is
    bright (white matter) is suspicious, where it is dark (ventricle) it is not.
    """
    template = resample_img(
        load_img(struct.MNI152_FILE_PATH),
        target_affine=affine,
        target_shape=shape,
        interpolation="linear",
        force_resample=True,
        copy_header=True,
    ).get_fdata(dtype=np.float32)
    pooled = downsample(template, factor)
    return z_score(pooled, pooled[head_mask(pooled)]).astype(np.float32)


def prepare(volume, factor, template=None):
    """Pool a volume to working resolution and z-score it inside the head.

    Returns
    -------
    image : ndarray of float32, shape (channels, x, y, z)
        Normalized intensities (scanners and cohorts scale them differently);
        with MIRROR_CHANNEL, the left-right mirror image as a second channel:
        most strokes are one-sided, so a lesion looks unlike its mirror, while
        ventricles, sulci and vascular changes are about symmetric.
    head : ndarray of bool, shape (x, y, z)
        Where the head is: patch centres are drawn there, and prediction only
        looks at the box around it.
    """
    channels = [downsample(volume, factor)]
    if MIRROR_CHANNEL:
        # Mirror at 1 mm, then pool: the MNI grid is symmetric about its
        # middle x voxel, so the pooled mirror lines up with the pooled image.
        channels.append(downsample(volume[::-1], factor))
    image = np.stack(channels)
    head = head_mask(channels[0])
    if head.any():  # (a blank volume has nothing to normalize by)
        # The mirror is scaled like the image, so that the two compare.
        image = z_score(image, channels[0][head])
    else:
        image = np.zeros_like(image)
    if template is not None:
        image = np.concatenate([image, template[None]])
    return np.clip(image, -5.0, 5.0).astype(np.float32), head


def pad_to_at_least(volume, sizes, mode="edge"):
    """Pad the end of the 3 spatial (last) axes to at least ``sizes`` (or one int)."""
    sizes = np.broadcast_to(sizes, 3)
    padding = [(0, 0)] * (volume.ndim - 3)
    padding += [
        (0, max(0, int(size) - side))
        for size, side in zip(sizes, volume.shape[-3:], strict=True)
    ]
    return np.pad(volume, padding, mode=mode)


def working_factor(voxel_volume_ml):
    """Integer pooling factor from the data's voxel size to WORKING_VOXEL_MM."""
    voxel_mm = (voxel_volume_ml * 1000.0) ** (1 / 3)
    return max(1, round(WORKING_VOXEL_MM / voxel_mm))


def channels_last(tensor):
    """Channels-last memory layout: 2-3 times faster 3D convolutions on CPU."""
    return tensor.contiguous(memory_format=torch.channels_last_3d)


def usable_cpu_count():
    """The cores this process may run on, on Linux, macOS and Windows alike."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13+
        return max(1, os.process_cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):  # Linux: honours taskset and cgroups
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)  # macOS, Windows before 3.13


def pick_device(name=None):
    """``name`` ("cuda", "cpu"), or None: CUDA when there is a GPU, else CPU."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cpu":
        torch.set_num_threads(usable_cpu_count())
    return device


# =============================================================================
# Training data: patches biased towards lesions, light augmentation
# =============================================================================
class PatchSampler:
    """Random training patches from volumes held in memory at working resolution.

    Parameters
    ----------
    images : list of ndarray (float16), shape (channels, x, y, z)
        Normalized, pooled images, each padded to at least the patch size.
    lesion_fractions : list of ndarray (float16)
        Fraction of each working voxel that is lesion, same shapes.
    head_voxels : list of ndarray (int)
        Flat indices of the voxels inside the head (random patch centres).
    rng : numpy.random.Generator
    """

    def __init__(self, images, lesion_fractions, head_voxels, rng):
        self.images = images
        self.lesion_fractions = lesion_fractions
        self.head_voxels = head_voxels
        self.lesion_voxels = [np.flatnonzero(mask > 0) for mask in lesion_fractions]
        self.rng = rng

    def _corner(self, shape, flat_centre):
        centre = np.unravel_index(flat_centre, shape)
        return [
            int(np.clip(c - PATCH_SIZE // 2, 0, side - PATCH_SIZE))
            for c, side in zip(centre, shape, strict=True)
        ]

    def patch(self):
        rng = self.rng
        subject = rng.integers(len(self.images))
        image = self.images[subject]
        lesion = self.lesion_voxels[subject]
        if lesion.size and rng.random() < LESION_PATCH_FRACTION:
            centre = rng.choice(lesion)
        elif self.head_voxels[subject].size:
            centre = rng.choice(self.head_voxels[subject])
        else:
            centre = rng.integers(image.size)
        target = self.lesion_fractions[subject]
        x, y, z = self._corner(target.shape, centre)
        window = np.s_[x : x + PATCH_SIZE, y : y + PATCH_SIZE, z : z + PATCH_SIZE]
        patch = image[(slice(None), *window)].astype(np.float32)
        target = target[window].astype(np.float32)

        # Augmentation. Axis x is left-right: the template is symmetric.
        if rng.random() < 0.5:
            patch, target = patch[:, ::-1], target[::-1]
        patch = patch * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
        if rng.random() < 0.5:
            patch = patch + rng.normal(0.0, 0.05, patch.shape).astype(np.float32)
        return np.ascontiguousarray(patch), np.ascontiguousarray(target)

    def batch(self, size):
        patches, targets = zip(*(self.patch() for _ in range(size)), strict=True)
        targets = np.stack(targets)[:, None]  # (batch, 1, x, y, z)
        return torch.from_numpy(np.stack(patches)), torch.from_numpy(targets)


def dice_plus_cross_entropy(logits, target):
    """Soft Dice over the whole batch + binary cross-entropy, equal weights.

    Dice is computed over the batch as one volume, so that patches without
    lesion do not give a meaningless Dice of their own.
    """
    probability = torch.sigmoid(logits)
    overlap = (probability * target).sum()
    dice = (2 * overlap + 1.0) / (probability.sum() + target.sum() + 1.0)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, target)
    return (1 - dice) + cross_entropy


# =============================================================================
# Prediction: Gaussian-blended sliding window
# =============================================================================
def gaussian_weights(sizes, device):
    """Window weights: 1 at the centre, about 0 at the borders (sigma = side / 8)."""
    profiles = []
    for size in sizes:
        axis = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
        profiles.append(torch.exp(-0.5 * (axis / (size / 8)) ** 2))
    weights = profiles[0][:, None, None] * profiles[1][:, None] * profiles[2]
    return weights.clamp_min(1e-3)  # every voxel keeps a little weight


def window_starts(side, window, overlap):
    """Evenly spread window positions covering ``[0, side)`` with the overlap."""
    if side <= window:
        return [0]
    step = window * (1 - overlap)
    count = int(np.ceil((side - window) / step)) + 1
    return sorted(set(np.linspace(0, side - window, count).round().astype(int)))


def head_box(head, margin):
    """Slices of the bounding box of the head, widened by ``margin`` voxels."""
    if not head.any():
        return tuple(slice(0, side) for side in head.shape)
    corners = np.argwhere(head)
    low = np.maximum(corners.min(axis=0) - margin, 0)
    high = np.minimum(corners.max(axis=0) + 1 + margin, head.shape)
    return tuple(slice(a, b) for a, b in zip(low, high, strict=True))


@torch.no_grad()
def sliding_window_probability(network, image, head, device):
    """Lesion probability of every voxel of ``image`` (working resolution).

    Only the box around the head is computed (about half of the MNI grid);
    outside the head the probability is 0.
    """
    box = head_box(head, margin=4)
    crop = image[(slice(None), *box)]
    # Window sides: WINDOW_SIZE, or the whole box when it is smaller (rounded
    # up to a multiple of 8, as the network pools 3 times by 2).
    sizes = [min(WINDOW_SIZE, -(-side // 8) * 8) for side in crop.shape[1:]]
    crop = torch.from_numpy(pad_to_at_least(crop, sizes)).to(device)
    weights = gaussian_weights(sizes, device)
    summed = torch.zeros(crop.shape[1:], device=device)
    total_weight = torch.zeros(crop.shape[1:], device=device)
    starts = [
        window_starts(side, size, WINDOW_OVERLAP)
        for side, size in zip(crop.shape[1:], sizes, strict=True)
    ]
    windows = [
        np.s_[x : x + sizes[0], y : y + sizes[1], z : z + sizes[2]]
        for x in starts[0]
        for y in starts[1]
        for z in starts[2]
    ]
    # Several windows per forward pass: much faster on CPU than one at a time.
    for first in range(0, len(windows), WINDOWS_PER_BATCH):
        batch = windows[first : first + WINDOWS_PER_BATCH]
        patches = torch.stack([crop[(slice(None), *window)] for window in batch])
        probabilities = torch.sigmoid(network(channels_last(patches)))[:, 0]
        for window, probability in zip(batch, probabilities, strict=True):
            summed[window] += probability * weights
            total_weight[window] += weights
    probability = torch.zeros(head.shape, device=device)
    sides = [part.stop - part.start for part in box]
    probability[box] = (summed / total_weight)[: sides[0], : sides[1], : sides[2]]
    # Lesions are inside the head. Outside, the image is dark and its mirror
    # may be bright (no two heads are exactly symmetric): it looks like a
    # lesion to the network, so rule it out.
    return probability * torch.from_numpy(head).to(device)


def shift_probability(probability, threshold):
    """Shift probabilities in logit space so that ``threshold`` becomes 0.5.

    The order of the voxels is kept; only where the cut falls changes.
    """
    logit = torch.logit(probability.clamp(1e-6, 1 - 1e-6))
    return torch.sigmoid(logit - float(np.log(threshold / (1 - threshold))))


# =============================================================================
# The estimator
# =============================================================================
class SmallUNet:
    """A small 3D U-Net trained on 2 mm patches; predicts at 1 mm.

    Parameters
    ----------
    epochs, patches_per_epoch, batch_size, learning_rate : int, int, int, float
        The training budget (see the constants at the top of the file).
    seed : int
        Seeds weights, patch sampling and augmentation: a CPU run is repeatable.
    device : {"cuda", "cpu"} or None
        None: CUDA when available, else CPU.

    Attributes
    ----------
    state_dict_ : dict of str to Tensor
        The trained weights, on CPU (what is pickled).
    factor_ : int
        Pooling factor from the data's voxels to the working voxels.
    architecture_ : dict
        The arguments of :class:`UNet3D`.
    data_shape_ : tuple of int
        Shape of the training volumes; prediction needs the same grid.
    template_ : ndarray of float32 or None
        The MNI152 template on the working grid (with TEMPLATE_CHANNEL).
    threshold_ : float
        Decision threshold tuned on training subjects; ``predict_proba``
        shifts the probabilities so that it becomes 0.5.
    n_parameters_ : int
    """

    def __init__(
        self,
        epochs=EPOCHS,
        patches_per_epoch=PATCHES_PER_EPOCH,
        batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        seed=SEED,
        device=None,
    ):
        self.epochs = epochs
        self.patches_per_epoch = patches_per_epoch
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.seed = seed
        self.device = device

    # -- fit ------------------------------------------------------------------
    def _load_training_set(self, X, y):
        """Read each volume once; keep it pooled, normalized, as float16."""
        images, lesion_fractions, head_voxels = [], [], []
        for i in range(len(X)):
            image, head = prepare(X[i], self.factor_, self.template_)
            fraction = downsample(y[i].astype(np.float32), self.factor_)
            # Pad small volumes (low-resolution data) up to one patch.
            images.append(pad_to_at_least(image, PATCH_SIZE).astype(np.float16))
            lesion_fractions.append(
                pad_to_at_least(fraction, PATCH_SIZE, "constant").astype(np.float16)
            )
            head = pad_to_at_least(head, PATCH_SIZE, "constant")
            head_voxels.append(np.flatnonzero(head).astype(np.int32))
        return images, lesion_fractions, head_voxels

    def fit(self, X, y):
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        device = pick_device(self.device)

        self.factor_ = working_factor(X.voxel_volume_ml)
        self.data_shape_ = X.volume_shape
        start = time.perf_counter()
        self.template_ = (
            template_on_grid(X.affine, X.volume_shape, self.factor_)
            if TEMPLATE_CHANNEL
            else None
        )
        sampler = PatchSampler(*self._load_training_set(X, y), rng)
        print(
            f"small_cnn: {len(X)} volumes loaded at {WORKING_VOXEL_MM:g} mm in "
            f"{time.perf_counter() - start:.1f} s; training on {device}",
            flush=True,
        )

        self.architecture_ = dict(
            in_channels=1 + MIRROR_CHANNEL + TEMPLATE_CHANNEL,
            base_channels=BASE_CHANNELS,
        )
        network = UNet3D(**self.architecture_)
        network = network.to(device, memory_format=torch.channels_last_3d)
        self.n_parameters_ = count_parameters(network)
        optimizer = torch.optim.AdamW(network.parameters(), lr=self.learning_rate)
        steps_per_epoch = max(1, self.patches_per_epoch // self.batch_size)
        # Cosine decay of the learning rate: big steps first, fine-tuning last.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.epochs * steps_per_epoch
        )
        network.train()
        for epoch in range(self.epochs):
            start, losses = time.perf_counter(), []
            for _ in range(steps_per_epoch):
                patches, targets = sampler.batch(self.batch_size)
                logits = network(channels_last(patches.to(device)))
                loss = dice_plus_cross_entropy(logits, targets.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
            print(
                f"small_cnn: epoch {epoch + 1:2d}/{self.epochs}  "
                f"loss {np.mean(losses):.3f}  {time.perf_counter() - start:.1f} s",
                flush=True,
            )

        # Keep the weights on CPU: picklable, and loadable without a GPU.
        self.state_dict_ = {
            name: tensor.detach().cpu() for name, tensor in network.state_dict().items()
        }
        self._network = network.eval()
        self.threshold_ = self._best_threshold(X, y, device)
        return self

    def _best_threshold(self, X, y, device):
        """The threshold in THRESHOLDS with the best mean Dice on a few subjects.

        The subjects are training subjects, evenly spread over ``X``; Dice is
        computed at the data's resolution, as it is scored.
        """
        subjects = np.unique(
            np.linspace(0, len(X) - 1, min(len(X), N_CALIBRATION_SUBJECTS)).round()
        ).astype(int)
        network = self._trained_network(device)
        dice_sums = np.zeros(len(THRESHOLDS))
        for i in subjects:
            probability = self._probability_on_data_grid(
                network, X[i], X.volume_shape, device
            )
            truth = torch.from_numpy(np.asarray(y[i], dtype=bool)).to(device)
            for position, threshold in enumerate(THRESHOLDS):
                predicted = probability >= threshold
                total = int(predicted.sum() + truth.sum())
                overlap = int((predicted & truth).sum())
                dice_sums[position] += 1.0 if total == 0 else 2 * overlap / total
        # On a tie, the highest threshold (THRESHOLDS is sorted): an untrained
        # network (all Dice 0) keeps 0.5 rather than raising a faint haze
        # everywhere to lesion level.
        best = len(THRESHOLDS) - 1 - int(np.argmax(dice_sums[::-1]))
        print(
            f"small_cnn: decision threshold {THRESHOLDS[best]:g} (Dice "
            f"{dice_sums[best] / len(subjects):.3f} on {len(subjects)} training "
            f"subjects; {dice_sums[-1] / len(subjects):.3f} at 0.5)",
            flush=True,
        )
        return THRESHOLDS[best]

    # -- predict --------------------------------------------------------------
    def _trained_network(self, device):
        """The network, rebuilt from ``state_dict_`` after unpickling."""
        network = getattr(self, "_network", None)
        if network is None:
            network = UNet3D(**self.architecture_)
            network.load_state_dict(self.state_dict_)
            self._network = network.eval()
        return network.to(device, memory_format=torch.channels_last_3d)

    def _probability_on_data_grid(self, network, volume, shape, device):
        """Unshifted lesion probability of one volume, on the data's grid."""
        image, head = prepare(volume, self.factor_, self.template_)
        probability = sliding_window_probability(network, image, head, device)
        if self.factor_ > 1:
            # Back to the data's grid: trilinear, then crop the edge padding.
            probability = F.interpolate(
                probability[None, None],
                scale_factor=self.factor_,
                mode="trilinear",
                align_corners=False,
            )[0, 0]
        return probability[: shape[0], : shape[1], : shape[2]].clamp(0, 1)

    def predict_proba(self, X):
        """Lesion probability of every voxel, float32 in [0, 1].

        Shifted so that 0.5 is the decision threshold tuned in :meth:`fit`.
        """
        if X.volume_shape != self.data_shape_:
            raise ValueError(
                f"small_cnn was trained on volumes of shape {self.data_shape_} "
                f"but is asked to predict on {X.volume_shape}: train and predict "
                "on the same grid."
            )
        device = pick_device(self.device)
        network = self._trained_network(device)
        probabilities = np.zeros(X.shape, dtype=np.float32)
        for i in range(len(X)):
            probability = self._probability_on_data_grid(
                network, X[i], X.volume_shape, device
            )
            probability = shift_probability(probability, self.threshold_)
            probabilities[i] = probability.cpu().numpy()
        return probabilities

    def predict(self, X):
        return self.predict_proba(X) >= 0.5

    def __getstate__(self):
        # Pickle the weights (state_dict_), not the live module.
        state = self.__dict__.copy()
        state.pop("_network", None)
        return state


def get_estimator():
    # Read the constants here (not at import) so that tests can change them.
    return SmallUNet(
        epochs=EPOCHS,
        patches_per_epoch=PATCHES_PER_EPOCH,
        batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        seed=SEED,
    )
