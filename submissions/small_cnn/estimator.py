"""Small 3D U-Net: learn what a lesion looks like from patches.

Idea
----
The starting kit thresholds intensities; a convolutional network *learns* the
features instead: shape, texture, context (a dark blob in the white matter is
suspicious, a dark ventricle is not). This is a classic 3D U-Net, kept small so
that it trains on a laptop CPU in minutes:

1. Each T1w volume is normalized (z-score inside the head) and average-pooled
   from 1 mm to 2 mm voxels: 8 times fewer voxels to compute on. The mask is
   pooled the same way, into the *fraction* of each 2 mm voxel that is lesion.
2. Training sees random 3D patches; half of them are centred on a lesion voxel,
   so that the rare lesion voxels are not drowned in healthy tissue. Light
   augmentation: left-right flips (the MNI template is symmetric), small
   intensity scaling and shifts, a little noise.
3. The loss is Dice (what we are scored on) plus binary cross-entropy (smooth,
   well-behaved gradients for every voxel).
4. Prediction slides a window over the 2 mm volume with overlap, blends the
   windows with Gaussian weights (the centre of a window sees more context than
   its border), then upsamples the probabilities back to 1 mm (trilinear).

Scores and cost (default synthetic sample, 40 train / 16 test, 1 mm, 2-core CPU)
-----------------------------------------------------------------------------
Still being tuned. In development runs, validation Dice (at 2 mm) reached about
0.4 after 400 training steps (about 14 minutes of CPU): below the voxel
classifier so far. On a CUDA GPU (H100) training ran and agreed with the CPU
(same weights: probabilities within 1e-3); see ``bench/check_cnn_cuda.py``.

Try next
--------
* Give the network the mirrored image as a second input channel
  (``np.flip(volume, axis=0)``): most strokes are one-sided, and the healthy
  hemisphere is the best reference for the sick one.
* Test-time augmentation: average the predictions of the image and of its
  left-right flip (twice the prediction cost).
* Train longer or wider (``EPOCHS``, ``BASE_CHANNELS``), or at 1 mm on patches
  around the lesions (``WORKING_VOXEL_MM = 1``), if you have a GPU.
"""

import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ``ramp-test --quick-test`` sets RAMP_TEST_MODE: train just enough to run.
QUICK_TEST = os.getenv("RAMP_TEST_MODE", "0") != "0"

# --- Training budget: the knobs to turn first --------------------------------
EPOCHS = 2 if QUICK_TEST else 24
PATCHES_PER_EPOCH = 8 if QUICK_TEST else 64
BATCH_SIZE = 4
PATCH_SIZE = 48  # voxels per side at the working resolution; a multiple of 8
LEARNING_RATE = 3e-3

# --- Model and data -----------------------------------------------------------
WORKING_VOXEL_MM = 2.0  # train and predict on 2 mm voxels (1 mm data pooled by 2)
BASE_CHANNELS = 8  # channels of the first level; doubled at each of 3 poolings
MIRROR_CHANNEL = True  # also give the network the left-right mirrored image
LESION_PATCH_FRACTION = 0.5  # share of patches centred on a lesion voxel
WINDOW_SIZE = 48  # sliding window side at prediction; a multiple of 8
WINDOW_OVERLAP = 0.25  # overlap of neighbouring sliding windows at prediction
WINDOWS_PER_BATCH = 4  # sliding windows computed together
SEED = 0

# Repeatable CUDA convolutions. (Set here, not in fit: cloudpickle cannot
# pickle a method that refers to torch.backends.cudnn.)
torch.backends.cudnn.benchmark = False
torch.backends.cudnn.deterministic = True


# =============================================================================
# The network
# =============================================================================
class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by instance norm and leaky ReLU."""

    def __init__(self, in_channels, out_channels):
        layers = []
        for channels in (in_channels, out_channels):
            layers += [
                # No bias: the normalization that follows would cancel it.
                nn.Conv3d(channels, out_channels, 3, padding=1, bias=False),
                # One group per channel is instance normalization (statistics
                # of each patch, so brightness differences between scanners
                # matter less); GroupNorm is faster than InstanceNorm3d on CPU.
                nn.GroupNorm(out_channels, out_channels),
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


def prepare(volume, factor):
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
    if not head.any():  # a blank volume: nothing to normalize by
        return np.zeros_like(image), head
    values = channels[0][head]
    image = (image - values.mean()) / max(float(values.std()), 1e-6)
    return np.clip(image, -5.0, 5.0).astype(np.float32), head


def pad_to_at_least(volume, size, mode="edge"):
    """Pad the end of the 3 spatial (last) axes to make them at least ``size``."""
    padding = [(0, 0)] * (volume.ndim - 3)
    padding += [(0, max(0, size - side)) for side in volume.shape[-3:]]
    return np.pad(volume, padding, mode=mode)


def working_factor(voxel_volume_ml):
    """Integer pooling factor from the data's voxel size to WORKING_VOXEL_MM."""
    voxel_mm = (voxel_volume_ml * 1000.0) ** (1 / 3)
    return max(1, round(WORKING_VOXEL_MM / voxel_mm))


def channels_last(tensor):
    """Channels-last memory layout: 2-3 times faster 3D convolutions on CPU."""
    return tensor.contiguous(memory_format=torch.channels_last_3d)


def pick_device(name=None):
    """``name`` ("cuda", "cpu"), or None: CUDA when there is a GPU, else CPU."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cpu":
        # Use the cores this process may run on (2 on the course laptops).
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
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
def gaussian_weights(size, device):
    """Window weights: 1 at the centre, about 0 at the borders (sigma = size / 8)."""
    axis = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    profile = torch.exp(-0.5 * (axis / (size / 8)) ** 2)
    weights = profile[:, None, None] * profile[None, :, None] * profile[None, None, :]
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
    crop = pad_to_at_least(image[(slice(None), *box)], WINDOW_SIZE)
    crop = torch.from_numpy(crop).to(device)
    weights = gaussian_weights(WINDOW_SIZE, device)
    summed = torch.zeros(crop.shape[1:], device=device)
    total_weight = torch.zeros(crop.shape[1:], device=device)
    starts = [
        window_starts(side, WINDOW_SIZE, WINDOW_OVERLAP) for side in crop.shape[1:]
    ]
    windows = [
        np.s_[x : x + WINDOW_SIZE, y : y + WINDOW_SIZE, z : z + WINDOW_SIZE]
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
            image, head = prepare(X[i], self.factor_)
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
        start = time.perf_counter()
        sampler = PatchSampler(*self._load_training_set(X, y), rng)
        print(
            f"small_cnn: {len(X)} volumes loaded at {WORKING_VOXEL_MM:g} mm in "
            f"{time.perf_counter() - start:.1f} s; training on {device}",
            flush=True,
        )

        self.architecture_ = dict(
            in_channels=2 if MIRROR_CHANNEL else 1, base_channels=BASE_CHANNELS
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
        return self

    # -- predict --------------------------------------------------------------
    def _trained_network(self, device):
        """The network, rebuilt from ``state_dict_`` after unpickling."""
        network = getattr(self, "_network", None)
        if network is None:
            network = UNet3D(**self.architecture_)
            network.load_state_dict(self.state_dict_)
            self._network = network.eval()
        return network.to(device, memory_format=torch.channels_last_3d)

    def predict_proba(self, X):
        """Lesion probability of every voxel, float32 in [0, 1]."""
        device = pick_device(self.device)
        network = self._trained_network(device)
        probabilities = np.zeros((len(X), *X.shape), dtype=np.float32)
        for i in range(len(X)):
            image, head = prepare(X[i], self.factor_)
            probability = sliding_window_probability(network, image, head, device)
            if self.factor_ > 1:
                # Back to the data's grid: trilinear, then crop the edge padding.
                probability = F.interpolate(
                    probability[None, None],
                    scale_factor=self.factor_,
                    mode="trilinear",
                    align_corners=False,
                )[0, 0]
            sx, sy, sz = X.shape
            probabilities[i] = probability[:sx, :sy, :sz].clamp(0, 1).cpu().numpy()
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
