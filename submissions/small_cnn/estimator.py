"""Small 3D U-Net: learn what a lesion looks like from patches.

The starting kit thresholds intensities; the voxel classifier learns from
features that a person chose. A convolutional network *learns* its features:
shape, texture, context (a dark blob in the white matter is suspicious, a dark
ventricle is not). This is a classic 3D U-Net, kept small (351k parameters) so
that it trains on a laptop CPU:

1. Each T1w volume is pooled from 1 mm to 2 mm voxels, divided by its bias
   field, z-scored inside the head and its histogram mapped onto the training
   set's. The network sees two channels: the image and the MNI152 template
   (what a healthy brain looks like at each place; the data are registered
   to it). The mask is pooled into the fraction of each 2 mm voxel that is
   lesion.
2. Training sees random 16-voxel patches (32 mm), half of them on a lesion
   drawn lesion by lesion (a 0.2 mL lesion as often as a 100 mL one).
   Augmentation (the ``AUGMENTATION`` table below) imitates the scanners and
   cohorts the training set lacks: left-right flips, contrast curves, bias
   fields, blur, noise, up to 2 voxels of misregistration between the image
   and the template, and a blanked box in the template channel.
3. The loss is MONAI's ``DiceCELoss``: soft Dice (what we are scored on) plus
   cross-entropy (smooth gradients for every voxel); AdamW, cosine decay.
4. Prediction slides windows of the patch size over the head (Gaussian
   blending), averages the image's and its left-right flip's predictions,
   upsamples to 1 mm and moves the decision threshold tuned on training
   subjects to 0.5.

What you would change lives in this file: the network (:class:`UNet3D`), the
augmentation (:data:`AUGMENTATION`, :func:`augment_intensities`,
:meth:`SmallUNet.make_patch`), the loss, optimiser and training loop
(:meth:`SmallUNet.fit`), and the budgets (:data:`BUDGETS`). The kit's
plumbing (per-subject preparation, the patch pipeline, sliding windows) is
``atlas_ramp.cnn``; every step it takes is switched by a parameter here.

Scores and cost (default synthetic sample, 2-core CPU): ``ramp-test
--submission small_cnn`` bagged test Dice 0.831, lesion F1 0.958 (seed 0;
0.80–0.82 for other seeds and thread counts), in 22 minutes and 1.01 GB; one
fit on all 40 subjects scores 0.57–0.60 on the unseen cohorts of
``data/generalizability``.

Read more in ``submissions/small_cnn/README.md`` (the model card): scores and
costs on CPU and GPU, every experiment that shaped this file and what it did,
and what to try next.
"""

import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from scipy import ndimage
from torch import nn

from atlas_ramp.cnn import (
    PatchDataset,
    PatchSegmenter,
    blank_random_box,
    channels_last,
    cut_window,
    fade_lesions,
    pad_to_at_least,
    patch_loader,
    pick_device,
    shift_without_wrap,
    standardize_histogram,
)
from atlas_ramp.machine import available_cpus
from atlas_ramp.testmode import is_quick_test

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
                # Batch norm is a fixed scaling at prediction, the same for
                # every window (instance norm learned more slowly here).
                nn.BatchNorm3d(out_channels),
                nn.LeakyReLU(0.01, inplace=True),
            ]
        super().__init__(*layers)


class UNet3D(nn.Module):
    """A 3D U-Net: ``depth`` levels, skip connections, one output channel (logits).

    Parameters
    ----------
    in_channels : int
        Input channels (the image, maybe its mirror image and the template).
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
        # lesion voxels in the patches: from 50% the first hundred steps would
        # only learn that the background is background.
        nn.init.constant_(self.head.bias, -4.0)

    @property
    def size_multiple(self):
        """Input sides must be multiples of this: ``2 ** (depth - 1)``."""
        return 2 ** (len(self.encoder) - 1)

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


# =============================================================================
# Augmentation: how often each change is made, and by how much
# =============================================================================
AUGMENTATION = {
    # A monotone contrast curve through knots (relative intensity, 1 = the
    # head's mean): each tissue moves by its own amount, as between scanners.
    "contrast_curve": dict(
        p=0.7, knots=(0, 0.2, 0.4, 0.6, 0.8, 1, 1.2, 1.5, 3), sd=0.3
    ),
    "gamma": dict(p=0.5, low=0.6, high=1.6),
    # A linear bias field: up to +-25% across the patch.
    "bias": dict(p=0.5, slope=0.5),
    "blur": dict(p=0.25, low_sigma=0.3, high_sigma=1.0),  # in working voxels
    "noise": dict(p=0.5, max_level=0.1, rician_p=0.5),
    "flip": dict(p=0.5),  # left-right (axis x; the template is symmetric)
    # Blank a box of the template channel (sides a quarter to three quarters
    # of the patch's): where image and template disagree, the image decides.
    "template_cutout": dict(p=0.5, low=0.25, high=0.75),
}


def augment_intensities(channels, relative_sd, rng, table=AUGMENTATION):
    """Vary intensities as scanners and cohorts do (image and mirror channels).

    Works on intensities relative to the head's mean (1 = average head
    tissue), then z-scores again.
    """
    relative = np.maximum(1.0 + channels * relative_sd, 0.0)
    curve = table["contrast_curve"]
    if rng.random() < curve["p"]:
        knots = np.asarray(curve["knots"], float)
        steps = np.diff(knots) * np.exp(rng.normal(0.0, curve["sd"], knots.size - 1))
        relative = np.interp(relative, knots, np.r_[0.0, np.cumsum(steps)])
    if rng.random() < table["gamma"]["p"]:
        relative = relative ** rng.uniform(
            table["gamma"]["low"], table["gamma"]["high"]
        )
    if rng.random() < table["bias"]["p"]:
        slope = table["bias"]["slope"]
        axes = [np.linspace(-0.5, 0.5, side) for side in channels.shape[1:]]
        grid = np.meshgrid(*axes, indexing="ij", sparse=True)  # broadcast, not copied
        gradient = sum(rng.uniform(-slope, slope) * g for g in grid)
        relative = relative * np.exp(gradient)[None]
    blur = table["blur"]
    if rng.random() < blur["p"]:
        sigma = rng.uniform(blur["low_sigma"], blur["high_sigma"])
        relative = np.stack([ndimage.gaussian_filter(c, sigma) for c in relative])
    noise = table["noise"]
    if rng.random() < noise["p"]:
        level = rng.uniform(0.0, noise["max_level"])
        draws = rng.normal(0.0, level, (2, *relative.shape))
        if rng.random() < noise["rician_p"]:  # the magnitude of a complex signal
            relative = np.hypot(relative + draws[0], draws[1])
        else:
            relative = relative + draws[0]
    return np.clip((relative - 1.0) / relative_sd, -5.0, 5.0)


# =============================================================================
# The estimator
# =============================================================================
class SmallUNet(PatchSegmenter):
    """A small 3D U-Net trained on 2 mm patches; predicts at 1 mm.

    Every knob is a parameter stored on the estimator, so a pickled model
    predicts the same whatever this file says later.

    Parameters
    ----------
    epochs, patches_per_epoch, batch_size : int
        The training budget: ``epochs * patches_per_epoch // batch_size`` steps.
    patch_size : int
        Patch side in working voxels, a multiple of 8.
    learning_rate : float
        AdamW's, with cosine decay to 0.
    working_voxel_mm : float
        Train and predict on voxels of this size (1 mm data pooled by 2).
    base_channels : int
        Channels of the network's first level.
    mirror_channel, template_channel : bool
        Also give the network the left-right mirror image, the MNI152 template.
    lesion_patch_fraction : float
        Share of patches centred on a lesion (lesions drawn one by one).
    bias_correction, histogram_standardization : bool
        Divide each image by its white-matter bias field; map each head's
        histogram onto the training set's.
    intensity_augmentation : bool
        :func:`augment_intensities`; else only a light scale and shift.
    misregistration_voxels : int
        Shift the template and mirror by up to this many voxels (no wrap).
    lesion_fade : float
        In half of the patches, fade lesions up to this share towards their
        surroundings (``atlas_ramp.cnn.fade_lesions``); 0: never.
    window_size, window_overlap, windows_per_batch
        Sliding windows at prediction; ``window_size=None``: ``patch_size``.
    flip_averaging : bool
        Average the predictions of the image and of its left-right flip.
    n_calibration_subjects : int
        Training subjects on which the decision threshold is tuned.
    min_lesion_peak : float
        Halve predicted lesions whose probability never reaches this.
    data_workers : int or None
        Processes preparing patches; None: 0 on CPU (fastest on 2 cores),
        up to 8 on CUDA. A fit is repeatable for a given seed, whatever this.
    cuda_batch_size : int or None
        Batch size on CUDA (None: ``batch_size``).
    bf16_autocast : bool
        On CUDA, run the network in bfloat16 autocast.
    seed : int
        Seeds weights, patches and augmentation.
    device : {"cuda", "cpu"} or None
        None: CUDA when available, else CPU.
    """

    def __init__(
        self,
        epochs=20,
        patches_per_epoch=1400,
        batch_size=8,
        patch_size=16,
        learning_rate=1e-3,
        working_voxel_mm=2.0,
        base_channels=8,
        mirror_channel=False,
        template_channel=True,
        lesion_patch_fraction=0.5,
        bias_correction=True,
        histogram_standardization=True,
        intensity_augmentation=True,
        misregistration_voxels=2,
        lesion_fade=0.0,
        window_size=None,
        window_overlap=0.5,
        windows_per_batch=32,
        flip_averaging=True,
        n_calibration_subjects=8,
        min_lesion_peak=0.9,
        data_workers=None,
        cuda_batch_size=None,
        bf16_autocast=False,
        seed=0,
        device=None,
    ):
        # Store every parameter as it is, as scikit-learn estimators do.
        for name, value in locals().items():
            if name != "self":
                setattr(self, name, value)

    def make_patch(self, subjects, rng):
        """One augmented training patch (channels, x, y, z) and its lesion fraction."""
        size = self.patch_size
        subject = rng.integers(len(subjects))
        centre = subjects.random_centre(subject, rng, self.lesion_patch_fraction)
        jitter = rng.integers(-size // 4, size // 4 + 1, 3)  # lesion off-centre
        corner = np.array(
            [
                int(np.clip(c - size // 2 + j, 0, max(side - size, 0)))
                for c, j, side in zip(centre, jitter, subjects.shape, strict=True)
            ]
        )
        image = subjects.image_patch(subject, corner, size, self.mirror_channel)
        target = subjects.target_patch(subject, corner, image.shape[1:])
        if self.lesion_fade and rng.random() < 0.5:
            image = fade_lesions(image, target, self.lesion_fade, rng)
        if self.intensity_augmentation:
            mean, sd = subjects.statistics[subject]
            image = augment_intensities(image, sd / max(mean, 1e-6), rng)
        else:  # light: intensity scaling and shift
            image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
        if self.standard_landmarks_ is not None:
            landmarks = subjects.landmarks[subject]
            image = standardize_histogram(image, landmarks, self.standard_landmarks_)
        # Misregistration: the mirror (if any) and the template slide against
        # the image; the template window is cut at the shifted corner.
        shift = self.misregistration_voxels
        channels = [image[:1]]
        if self.mirror_channel:
            offsets = rng.integers(-shift, shift + 1, 3)
            channels.append(shift_without_wrap(image[1:], offsets))
        if self.template_channel:
            offsets = rng.integers(-shift, shift + 1, 3)
            window = cut_window(self.template_, corner - offsets, image.shape[1:])
            cutout = AUGMENTATION["template_cutout"]
            if rng.random() < cutout["p"]:
                window = blank_random_box(window, cutout["low"], cutout["high"], rng)
            channels.append(window[None])
        patch = pad_to_at_least(np.concatenate(channels).astype(np.float32), size)
        target = pad_to_at_least(target, size, "constant")
        if rng.random() < AUGMENTATION["flip"]["p"]:
            patch, target = patch[:, ::-1], target[::-1]
        return np.ascontiguousarray(patch), np.ascontiguousarray(target)

    def build_network(self):
        channels = 1 + bool(self.mirror_channel) + bool(self.template_channel)
        return UNet3D(in_channels=channels, base_channels=self.base_channels)

    def fit(self, X, y):
        torch.manual_seed(self.seed)
        device = pick_device(self.device)
        on_cuda = device.type == "cuda"
        subjects = self.read_training_subjects(X, y)  # a few hundred kB each
        network = self.build_network().to(device, memory_format=torch.channels_last_3d)
        self.n_parameters_ = sum(weight.numel() for weight in network.parameters())
        optimizer = torch.optim.AdamW(network.parameters(), lr=self.learning_rate)
        batch_size = (on_cuda and self.cuda_batch_size) or self.batch_size
        steps_per_epoch = max(1, self.patches_per_epoch // batch_size)
        # Cosine decay of the learning rate: big steps first, fine-tuning last.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.epochs * steps_per_epoch
        )
        # Soft Dice over the whole batch as one volume (patches without lesion
        # have no Dice of their own) + binary cross-entropy, equal weights.
        # The targets are lesion fractions in [0, 1]; both terms accept them.
        loss_function = DiceCELoss(
            sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0
        )
        # Patch k is drawn with its own seed (seed, k): the same patches in the
        # same order whatever the number of worker processes.
        n_patches = self.epochs * steps_per_epoch * batch_size
        patches = PatchDataset(subjects, self.make_patch, n_patches, self.seed)
        workers = self.data_workers
        if workers is None:  # workers did not pay on a 2-core CPU
            workers = min(8, max(1, available_cpus() - 1)) if on_cuda else 0
        batches = iter(patch_loader(patches, batch_size, workers, self.seed, on_cuda))
        bf16 = on_cuda and self.bf16_autocast
        print(f"small_cnn: training on {device}, {workers} data workers", flush=True)
        network.train()
        self.data_workers_, self.data_wait_s_ = workers, 0.0
        self.losses_, self.epoch_seconds_ = [], []
        for epoch in range(self.epochs):
            start, losses = time.perf_counter(), []
            for _ in range(steps_per_epoch):
                waited = time.perf_counter()
                images, targets = next(batches)
                self.data_wait_s_ += time.perf_counter() - waited
                images = channels_last(images.to(device, non_blocking=True))
                targets = targets.to(device, non_blocking=True)
                with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    logits = network(images)
                loss = loss_function(logits.float(), targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
            self.losses_.append(float(np.mean(losses)))
            self.epoch_seconds_.append(time.perf_counter() - start)
            print(
                f"small_cnn: epoch {epoch + 1:2d}/{self.epochs}  loss "
                f"{self.losses_[-1]:.3f}  {self.epoch_seconds_[-1]:.1f} s",
                flush=True,
            )
        del batches  # stops the worker processes
        self.keep_trained(network, X, y, device)  # and tune the threshold
        return self


#: Training budgets. ``ramp-test --quick-test`` uses "quick"; on a CUDA GPU,
#: set ``budget="gpu"`` in get_estimator's default (one line).
BUDGETS = {
    # Enough to see it learn in well under a minute a fold: small patches,
    # all holding a lesion, a higher learning rate, one pass over the head.
    "quick": dict(
        epochs=4,
        patches_per_epoch=96,
        patch_size=24,
        learning_rate=3e-3,
        lesion_patch_fraction=1.0,
        n_calibration_subjects=4,
        flip_averaging=False,
        min_lesion_peak=0.6,
        window_size=128,
    ),
    "cpu": dict(),
    # Longer training and a wider network (5 times the patches; 29 min a fit
    # on one CPU core). On CUDA: batches of 32 in bfloat16 (unmeasured there).
    # The device stays None: a model trained on a GPU still predicts on a laptop.
    "gpu": dict(
        epochs=50,
        patches_per_epoch=2800,
        base_channels=16,
        cuda_batch_size=32,
        bf16_autocast=True,
    ),
}


QUICK_TEST_NOTE = """small_cnn, quick test: {steps} training steps per fold on small
  patches, enough to see the network start to find lesions (expect a low Dice,
  0.3 to 0.6 on the default sample, varying a lot from seed to seed), not to judge
  it. The quick test checks that the submission trains, predicts and is scored end
  to end. For the real figures (about 25 minutes on 2 CPU cores):
  ramp-test --submission small_cnn"""


def get_estimator(budget=None):
    """The small U-Net with the budget's settings.

    Parameters
    ----------
    budget : {"quick", "cpu", "gpu"} or None
        None: "quick" under ``ramp-test --quick-test``, else "cpu".
    """
    if budget is None:
        budget = "quick" if is_quick_test() else "cpu"
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {sorted(BUDGETS)}, got {budget!r}.")
    estimator = SmallUNet(**BUDGETS[budget])
    # Say once per process (ramp-test calls this for every fold) what the
    # quick test is for: its scores would otherwise look like a broken model.
    if budget == "quick" and not os.environ.get("SMALL_CNN_QUICK_NOTE_SHOWN"):
        os.environ["SMALL_CNN_QUICK_NOTE_SHOWN"] = "1"
        steps = estimator.epochs * (estimator.patches_per_epoch // estimator.batch_size)
        print(QUICK_TEST_NOTE.format(steps=steps), flush=True)
    return estimator
