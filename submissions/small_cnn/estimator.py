"""Small 3D U-Net: learn what a lesion looks like from patches.

Idea
----
The starting kit thresholds intensities; the voxel classifier learns from
features that a person chose. A convolutional network *learns* its features:
shape, texture, context (a dark blob in the white matter is suspicious, a dark
ventricle is not). This is a classic 3D U-Net, kept small (351k parameters) so
that it trains on a laptop CPU in minutes:

1. Each T1w volume is average-pooled from 1 mm to 2 mm voxels (8 times fewer
   voxels to compute on), divided by its bias field (the smooth brightening
   that receive coils leave, estimated on the white matter:
   :func:`white_matter_bias`), z-scored inside the head, and its histogram
   mapped onto the training set's (:func:`standardize_histogram`), so that a
   scanner with another contrast curve looks like the training scanners. The
   network sees two channels: the image, and the MNI152 template, which shows
   what a healthy brain looks like at each place (the data are registered to
   it). A third, the left-right mirror image (most strokes are one-sided, so a
   lesion looks unlike its mirror), is one switch away
   (``mirror_channel=True``): it was the default until it proved to cost
   Dice on misregistered cohorts (below). The mask is pooled the same way,
   into the *fraction* of each 2 mm voxel that is lesion.
2. Training sees random 16-voxel patches (32 mm), 1,400 an epoch; half of
   them hold a lesion, drawn lesion by lesion (a 0.2 mL lesion as often as a
   100 mL one), so that the rare lesion voxels are not drowned in healthy
   tissue. Each patch is cut from the volume when it is drawn (the kit's
   volume cache maps the file: cheap), so memory does not grow with the
   training set. Augmentation, for the scanners and cohorts that the
   training set lacks: left-right flips, contrast curves that move each
   tissue by its own amount, bias fields, blur, Gaussian or Rician noise,
   and up to 2 voxels of misregistration between the image and the
   template (and the mirror, when it is used).
3. The loss is MONAI's ``DiceCELoss``: soft Dice (what we are scored on) plus
   binary cross-entropy (smooth, well-behaved gradients for every voxel).
4. Prediction slides windows of the training patch size over the box
   around the head, each overlapping its neighbours by half, and MONAI's
   ``sliding_window_inference`` blends them with Gaussian weights (a
   window's centre sees the most context): the network sees the context it
   was trained on. It does so on the image and on its left-right flip, and
   averages the two. The probabilities are then upsampled back to 1 mm
   (trilinear), and shifted so that the decision threshold tuned on
   training subjects becomes 0.5.

Every knob is a parameter of :class:`SmallUNet`; :func:`get_estimator` picks a
budget: "quick" under ``ramp-test --quick-test``, "cpu" otherwise, "gpu" when
you set it (``get_estimator(budget="gpu")``: longer training, wider network).

What changed, and why (issue 13)
--------------------------------
* The knobs were module constants read deep inside helpers, so a pickled model
  behaved as whatever source file was loaded; now they are stored on the
  estimator, and the helpers take them as arguments.
* ``fit`` held every training volume at 2 mm (about 9.5 MB a subject: 5 GB for
  an ATLAS fold of 524 subjects). It now keeps a head mask (a bit a voxel),
  the head's mean, sd and histogram landmarks, a coarse bias field (8 mm
  cells) and the sparse lesion voxels (about 218 kB a subject), and cuts
  patches from the memory-mapped volume cache (``bench/bench_cnn_memory.py``:
  40 vs 160 subjects at 2 mm).
* MONAI's ``sliding_window_inference`` and ``DiceCELoss`` replace the
  hand-written window blending and loss (same formulas: the tests check it).
* On the unseen cohorts of ``data/generalizability`` the network predicted up
  to 240 mL of lesion in a subject with 3 mL: their bias fields (up to 40%
  across the head, three times the training cohorts') make one hemisphere
  darker than its mirror, which is what a lesion looks like to this network.
  Dividing each image by its white-matter bias field (the mirror by the
  mirrored field) brought the predicted volume back to the true one and
  nearly doubled the Dice there (table below).
* The unseen cohorts also have other contrast curves (grey matter darker,
  fluid brighter, gamma 1.4-1.6): histogram standardization maps each head's
  percentiles onto the training set's: +0.08 Dice there, and within 0.01 in
  distribution (means of two seeds). Full equalization (ranks on a normal
  scale) gained as much there but lost 0.07 Dice in distribution, probably
  because it stretches the narrow white-matter peak, and the noise in it,
  over a wide range.
* Patch centres were drawn voxel by voxel, so large lesions filled the
  lesion patches and small ones were missed; they are now drawn lesion by
  lesion, anywhere in the central half of the patch.
* Patches of 16 voxels instead of 32, and 7.3 times as many of them, in
  about the same CPU time: +0.08 Dice in distribution and +0.05 on the
  unseen cohorts (one fold, means of three seeds against two), and bagged
  test Dice 0.651 -> 0.812 in the full ``ramp-test``. On a CPU the network
  learns more from many small views than from a few wide ones: 48-voxel
  patches lost Dice, 24-voxel ones gained half as much. The price was a
  less dependable single fit, which the next change repairs.
* Prediction ran the network once over the whole head, which training
  never showed it: at the deepest of its 4 levels a 16-voxel patch is 2
  voxels a side, mostly the convolutions' zero padding, while a whole head
  is about 10 voxels a side of real tissue. Some fits, sound by their
  training loss, then lit up false lesions across the head. Prediction now
  slides windows of the training patch size, overlapping by half (as
  nnU-Net does). Re-scoring saved one-fold models, threshold re-tuned:
  the two bad fits (1 voxel of misregistration; 1,800 patches an epoch)
  went from valid Dice 0.516 and 0.670 (lesion F1 0.285,
  0.697) to 0.685 and 0.731 (F1 0.849, 0.865), unseen Dice 0.161 and
  0.244 to 0.304 and 0.418, and their calibration Dice (below) from 0.30
  and 0.70 to 0.83 and 0.89. The default's three sound seeds lost some in
  distribution (valid Dice 0.738 -> 0.701 on average) and kept their
  unseen Dice (0.443 -> 0.437). The full ``ramp-test``: validation Dice 0.710
  +- 0.120 -> 0.783 +- 0.057 (half the spread), bagged test Dice 0.812 ->
  0.821. 32-voxel windows repaired half as much; less overlap (0.375,
  0.25) or no flip averaging lost 0.03-0.07 valid Dice on the sound fit.
  Windows that hold no head voxel are skipped; prediction still costs 2.5
  times the single pass (2.3 s a subject on 2 cores, against 0.9 s).
* The quick test trained 16 steps and scored Dice 0, which reads as
  "broken"; it now trains on small lesion-centred patches and says what it
  checks.
* Prediction took 2.6 s a subject on one core, 0.8 s of it sorting the whole
  volume to find each predicted blob's peak (``ndimage.maximum``); the peaks
  now come from the blobs' own voxels: 1.5 s a subject.
* The mirror channel is off by default. The unseen cohorts are misregistered
  (a rigid shift of 1.5-3 mm and a rotation of 1.5-3 degrees that the
  template and the MNI midline do not share), and the mirror of a rotated
  image is off by up to twice the rotation: healthy tissue then looks unlike
  its mirror. One fold, seeds 0, 1 and 2, the same day on one machine:
  without the mirror, valid Dice 0.736, 0.675 and 0.755, unseen 0.532,
  0.494 and 0.551 (lesion F1 0.613, 0.573, 0.595); with it, 0.727, 0.763
  and 0.676, unseen 0.411, 0.449 and 0.445 (F1 0.453, 0.513, 0.454). Means:
  valid 0.722 both ways, unseen 0.526 against 0.435. The full ``ramp-test``
  kept its bagged test Dice (0.822 against 0.821; lesion F1 0.967 against
  0.931) with a lower mean validation Dice (0.757 +- 0.061 against 0.783 +-
  0.057); one fit on all 40 went from 0.413 to 0.585 unseen Dice (figures
  below).

What each change did (one fold: fit on 32 training subjects, scored on the 8
others of ``data/train`` and on the 16 subjects of ``data/generalizability``;
2 seeds where two values are given; 1 core each; "volume" is the median of
predicted over true lesion volume on the unseen cohorts):

=======================================  ============  ============  ========
change, on top of the row above          valid Dice    unseen Dice   volume
=======================================  ============  ============  ========
start of the issue's second round (a)    0.650         0.130         6.6
lesion-by-lesion patch centres (a)       0.646         0.184         5.4
tissue contrast curves, 2-voxel shift    0.652         0.179         4.4
white-matter bias correction             0.688, 0.634  0.330, 0.302  1.0
histogram standardization                0.690, 0.616  0.407, 0.377  0.6
16-voxel patches, 7.3 times as many      0.735, 0.761  0.411, 0.474  1.2, 1.0
(a third seed: 0.719, 0.444)
windows of the patch size (b)            0.706, 0.739  0.381, 0.471  -
(a third seed: 0.657, 0.459)
no mirror channel (c)                    0.736, 0.675  0.532, 0.494  -
(default; a third seed: 0.755, 0.551)
=======================================  ============  ============  ========

(a) Fit on all 40, scored on ``data/test``. (b) The same three fits, re-scored
with windows (volume not measured). (c) Measured on another machine, against
the row above re-run there (its figures are in the mirror bullet above: the
same seeds give slightly different fits from one machine to another). Without
the template channel as well (the image alone): valid 0.751 and 0.728, unseen
0.452 and 0.468 (seeds 0 and 1): the template helps on the unseen cohorts once
the mirror is gone (with the mirror and without the template: 0.740 and 0.760,
unseen 0.436 and 0.365). Up to 3 voxels of misregistration instead of 2 (6 mm,
twice the unseen cohorts' shifts): valid 0.737 and 0.735, unseen 0.505 and
0.509 (seeds 0 and 1, on a third machine): no clear gain. Tried and left out,
each on top of bias correction: fading training lesions towards grey matter
(valid 0.621, unseen 0.352), head-wide bias fields in augmentation with
stronger contrast curves (0.598, 0.262), 30 epochs instead of 20 (0.664,
0.328), ranks (0.556 and 0.615, 0.413 and 0.375), z-scores and ranks as two
channels each (0.680 and 0.625, 0.335 and 0.251); on top of standardization,
half of the patches without intensity augmentation (0.615 and 0.650, 0.332 and
0.309).

Tried after that, on top of standardization, and left out (valid Dice,
unseen Dice; against 0.690 and 0.616, 0.407 and 0.377 above): learning rate
3e-3 (0.595, 0.251); soft Dice per patch instead of per batch, which weighs
small lesions more (0.664, 0.389); healing half the training lesions part of
the way towards the tissue on the other side, so that pale lesions are seen
(2 seeds: 0.592 and 0.572, 0.304 and 0.236; the network then flags normal
asymmetries); 80% lesion patches (0.671, 0.364); the darkest 1 mm voxel of
each 2 mm voxel as a fourth channel, so that small dark lesions are not
averaged away (0.681 and 0.605, 0.372); 48-voxel patches at the same number
of steps, 1.6 times slower (0.614 and 0.579, 0.290 and 0.337); batch-norm
statistics recomputed on unaugmented patches after training (0.629, 0.378);
carving each lesion, with a margin of its own tissue, into the same place of
another training subject (after CarveMix; 0.632 and 0.608, 0.392 and 0.319).
The 8 validation subjects move the Dice by up to 0.07 from one seed to the
next: none of these is a clear gain. Patch sizes, at about the same CPU
time: 24 voxels, 2.3 times as many (0.737 and 0.691, 0.375 and 0.407); the
same in batches of 4 (0.657, 0.338). With one pass over the whole head
(before windows), training longer on small patches broke the prediction:
16 voxels with 1,800 an epoch (0.670, false lesions along the midline; with
windows 0.731, 0.418) and 24 voxels with 640 (0.567, lesion F1 0.38). A
third of the patches on a lesion instead of half
(``lesion_patch_fraction=0.33``) kept three one-fold fits sound (0.731,
0.702, 0.683) but lost in the full ``ramp-test`` (validation Dice 0.568 +-
0.123, bagged test Dice 0.802, lesion F1 0.792; one pass, too). With
windows: brightening half the training lesions by up to 70% (towards the
paler cores of the unseen cohorts) over-segmented there (2 seeds: valid
0.714 and 0.702, unseen 0.356 and 0.314, against 0.706 and 0.739, 0.381
and 0.471 without).

Scores and cost (default synthetic sample, 1 mm, 2-core CPU)
------------------------------------------------------------
``ramp-test --submission small_cnn`` (5 folds; ``bench/bench_baselines.py``
on an idle machine): validation Dice 0.757 +- 0.061; bagged test Dice 0.822,
lesion-wise F1 0.967, volume difference 1.33 mL, lesion-count difference
0.19; 1,747 s (3,167 s of CPU time), peak memory 0.92 GB (the same scores
took 1,871 s on another machine, 3,299 s of CPU time). On a faster machine
(an epoch took 12 s on one core there), with the mirror channel: 0.783 +-
0.057, 0.821, F1 0.931, 1,539 s (2,654 s of CPU time); with one pass over
the whole head instead of windows: 0.812, 1,245 s; with 32-voxel patches
(the default before that): 0.651, F1 0.800, 1,201 s; the version before this
issue: 0.714, F1 0.916, 1,400 s. ``ramp-test --quick-test`` (24-voxel
patches, one pass): bagged test Dice 0.584, F1 0.477, 90 s (with the mirror,
on the faster machine: 0.336, 82 s). One model fit on all 40 training
subjects (``atlas-ramp evaluate``): ``data/test`` Dice 0.823, F1
0.967; ``data/generalizability`` Dice 0.585, F1 0.649, volume difference 2.9
mL, lesion count off by 0.9 a subject (R008 0.45, the three other unseen
cohorts 0.81); single fits vary: seeds 0 and 1 on another machine, 0.564 and
0.528 (F1 0.533 and 0.591). With the mirror channel: 0.796 and 0.904; 0.413,
0.499, 7.1 mL and 2.4. Of the issue's targets, test Dice and F1 (0.80) are
reached, by the bagged fold models and by one fit; the unseen cohorts'
(0.70) are not, except nearly by the "gpu" budget (Try next).

One fit can still be weaker than the rest. ``fit`` prints its Dice on the
training subjects it calibrates the threshold on: 0.81-0.89 for a sound fit
(with windows). Bagging five fold models, as ``ramp-test`` does, averages
the false blobs of a weaker one away.

Training memory barely grows: peak RSS 869 MB at 40 training subjects,
893 MB at 160 (2 mm sample, ``bench/bench_cnn_memory.py``: 0.20 MB a
subject), for 218 kB of arrays held per subject. An epoch of 175 steps of 8
patches takes about 12 s on one core; prediction 2.3 s a subject on two
cores, with windows and flip averaging (0.9 s in one pass).

Try next
--------
* A GPU, for the larger budget: it closes most of the unseen gap.
  ``get_estimator(budget="gpu")`` (16 base channels, 50 epochs of 2,800
  patches: 5 times the patches, about 10 times the CPU work) took 29 min a
  fit on one CPU core. Fit on all 40, seeds 0 and 1: unseen Dice 0.662 and
  0.691, lesion F1 0.717 and 0.754, volume difference 2.4 and 2.1 mL (R008
  0.564 and 0.621), against 0.564 and 0.528, F1 0.533 and 0.591 for the
  default on the same machine; ``data/test`` Dice 0.878 and 0.882, F1 0.966
  and 0.958. One fold, seeds 0 and 1: valid Dice 0.836 and 0.804, unseen
  0.697 and 0.681 (F1 0.723 and 0.767), against 0.737 and 0.542 for the
  default (seed 0). It is the longer training: the default network (8
  channels) trained as long, 16 min a fit, scored 0.676 on the unseen
  cohorts (F1 0.794; all 40, seed 0), while the wider network at the
  default's number of steps did not gain (below). At 29 min a fit, a 5-fold
  ``ramp-test`` at this budget does not fit a laptop's half hour; it has not
  run on CUDA yet (``bench/check_cnn_cuda.py`` is the check). Then 1 mm
  patches around the lesions (``working_voxel_mm=1``) for sharper borders
  and small lesions. On CPU, many small patches beat a few wide ones; 30
  epochs of 32-voxel patches instead of 20 lowered the loss but not the
  validation Dice.
* Where it fails (diagnosed on the 32-voxel version). In distribution, the
  test subjects with Dice 0 hold only lesions of 0.2-0.4 mL, dark ones
  (about 0.6 of the tissue around them): the network's probability there
  peaks near the threshold, and no decision threshold or blob rule tried
  recovers them without false blobs elsewhere.
  On the unseen cohorts, 10 of the 16 subjects come from one cohort (R008:
  fluid brighter, grey matter darker, the strongest bias field) whose
  gliotic lesions sit at grey-matter intensity; where they touch grey
  matter (cerebellum, cortex, beside the deep grey nuclei) they are missed,
  or a blob elsewhere is found instead. Measured on the masks (median
  intensity, in units of the grey-to-white-matter step, from grey matter):
  training lesions lie 0.6-1.5 steps below grey matter, R008's from 1.3
  below to 0.3 above. With the mirror channel, the four nearest grey
  matter or above it (sub-r008s001, s002, s003, s008) scored Dice 0-0.29
  (one fit on all 40), and darker ones were missed too where they touch
  grey matter (s004, s007, s009: 0.16-0.23). Without it, s002, s003 and
  s007 reach 0.58-0.76; s008 and s009 still score 0, s001 and s004 0.24
  and 0.17.
* Pale lesions in training (``lesion_fade``, off by default). R008's lesions
  are pale: their mean, in the z-scores the network sees, is -0.13 to -0.78
  (sub-r008s008: -0.13, with 0.04 in a 2-voxel ring of tissue around it),
  against -1.07 to -1.87 for the training lesions. ``lesion_fade=0.8``
  moves, in half of the training patches, the lesion voxels a random share
  (up to 0.8) of the way to the median of that ring; the target stays the
  same. The faded network finds pale lesions, and also false blobs on grey
  matter and along the midline that peak at a probability of 0.9-0.98, so it
  needs ``min_lesion_peak=0.98`` with it. One fold, seeds 0 and 1, on one
  machine, against the default's valid Dice 0.744 and 0.677, unseen 0.534
  and 0.480 (unseen lesion F1 0.640 and 0.490): fading alone, valid 0.733
  and 0.760, unseen 0.572 and 0.517 (F1 0.480, 0.525); with the 0.98 peak,
  valid 0.782 and 0.774, unseen 0.587 and 0.552 (F1 0.596, 0.615); the 0.98
  peak without fading, unseen 0.442 and 0.451; fading by up to 0.5, valid
  0.705 and 0.730, unseen 0.571 and 0.548 (0.9 peak). But the full
  ``ramp-test`` with both lost: validation Dice 0.741 +- 0.072 (fold 1:
  0.615), bagged test Dice 0.723, lesion F1 0.862 (1,918 s), against 0.757
  +- 0.061, 0.822 and 0.967 for the default (1,747 s), both on one machine.
  Not a bagging effect: the fold models alone scored 0.695-0.776 on
  ``data/test`` (mean 0.721), against 0.764-0.833 (mean 0.799) for the
  default's. On new subjects of the training cohorts the faded models are
  weaker, which the 8 validation subjects of one fold did not show. A
  gentler fade did not clearly help: a quarter of the patches, by up to
  0.5, one fit on all 40, seeds 0 and 1: unseen Dice 0.590 and 0.526,
  against 0.564 and 0.528 for the default on the same machine.
* The unseen gap is a bias (of the short training: first bullet) more than
  the spread of single fits: averaging the probabilities of several fits, as
  bagging does, gained little (the default's two fits above: 0.587 together;
  five fits, those two, one on a fold and two faded: 0.553). Per cohort,
  R008 (10 of the 16 unseen subjects) scored 0.40-0.44 and the three others
  0.68-0.80. Besides pale lesions, every R008 subject has white-matter
  hypointensities of severity 0.6-1 (9% of the training subjects reach 0.6)
  and 60-119 perivascular spaces (8-49 in training): dark, and not traced
  (``atlas_ramp/synthetic/generalizability.py``). The false blobs there peak
  at 0.91-0.99 (true ones at 0.97-1.0): 18 of 29 in white matter, the others
  on grey matter and the deep grey nuclei. Darkening random blobs of white
  matter towards grey matter in half of the training patches, target
  unchanged, cut the false blobs from 29 to 18 (in white matter from 18 to
  9) and raised R008 (0.419 and 0.438 to 0.459 and 0.481) but not the unseen
  Dice as a whole (0.535 and 0.592; one fold: valid 0.735 and 0.792, unseen
  0.523 and 0.606), for 40% longer epochs: not kept. Neither helped clearly:
  a wider network at the same number of steps (``base_channels=16``, one
  fold: valid 0.700, unseen 0.594, against 0.737 and 0.542), more blur (half
  of the patches, up to 4 mm: unseen 0.451, seed 0), a decision threshold
  tuned on intensity-augmented training subjects (0.4 instead of 0.5 for one
  fit of two), a fixed threshold of 0.3 (2 of 6 fits up by 0.02-0.05, 4 down
  by up to 0.05).
* Make every fit sound at the source, not only at prediction, so that it
  could predict in one cheaper pass and keep the sound fits' Dice. Neither
  recomputing batch-norm statistics after training nor ending on wider
  patches did it: two last epochs on 32-voxel patches (as many voxels)
  lost with windows (valid 0.689 and 0.661, unseen 0.349 and 0.226; seed
  0 and 1 voxel of misregistration) and, in one pass, lost on the sound
  fit (0.677) while half-repairing the other (0.720, lesion F1 0.788).
* A loss that weighs lesions one by one (the per-patch Dice above only
  half does), and a decision threshold tuned on subjects the network did
  not train on (training subjects make it overconfident). Re-scoring two
  one-fold fits (3 voxels of misregistration, seeds 0 and 1; both had
  calibrated at 0.5): a threshold of 0.3 took one from unseen Dice 0.505
  to 0.576 (lesion F1 0.625 to 0.706, valid 0.737 to 0.746) and left the
  other at 0.511 (valid 0.735 to 0.702); 0.7 lost on both (unseen 0.444).
  The paler unseen lesions get lower probabilities. Keeping every blob
  (``min_lesion_peak=0.5``) costs lesion F1: unseen 0.431 and 0.360
  against 0.625 and 0.650.
"""

import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from nilearn.datasets import struct
from nilearn.image import load_img, resample_img
from scipy import ndimage
from torch import nn

from atlas_ramp.machine import available_cpus
from atlas_ramp.masks import SparseMask
from atlas_ramp.testmode import is_quick_test
from atlas_ramp.volumes import MaskSequence

# Repeatable CUDA convolutions. (Set here, not in fit: cloudpickle cannot
# pickle a method that refers to torch.backends.cudnn.)
torch.backends.cudnn.benchmark = False
torch.backends.cudnn.deterministic = True

#: Decision thresholds tried after training (on training subjects).
THRESHOLDS = (0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


# =============================================================================
# The network (written by hand: it is what this baseline teaches)
# =============================================================================
class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by batch norm and leaky ReLU."""

    def __init__(self, in_channels, out_channels):
        layers = []
        for channels in (in_channels, out_channels):
            layers += [
                # No bias: the normalization that follows would cancel it.
                nn.Conv3d(channels, out_channels, 3, padding=1, bias=False),
                # Batch normalization: at prediction it is a fixed scaling, the
                # same for every window. (Instance normalization, per patch,
                # learned more slowly here.)
                nn.BatchNorm3d(out_channels),
                nn.LeakyReLU(0.01, inplace=True),
            ]
        super().__init__(*layers)


class UNet3D(nn.Module):
    """A 3D U-Net: 4 levels, skip connections, one output channel (logits).

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
        # lesion voxels in the patches. From the default 50% the first hundred
        # steps would only learn that the background is background.
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
# Images: shapes, normalization, resampling, padding
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
    _, mean, sd = pooled_statistics(pooled)
    return ((pooled - mean) / sd).astype(np.float32)


def pooled_statistics(pooled):
    """Head mask, and mean and sd of the head's intensities, of a pooled volume."""
    head = head_mask(pooled)
    if not head.any():  # a blank volume: nothing to normalize by
        return head, 0.0, 1.0
    values = pooled[head]
    return head, float(values.mean()), max(float(values.std()), 1e-6)


#: Working voxels per cell of the grid the bias field is estimated on (8 mm
#: at 2 mm): a scanner's bias varies over centimetres, not millimetres.
BIAS_CELL = 4


def white_matter_bias(pooled, head, cell=BIAS_CELL, sigma_cells=2.0, rounds=4):
    """Log of a volume's smooth multiplicative bias, estimated on its white matter.

    Receive coils make one part of the head brighter than another (up to 40%
    here). White matter should be one intensity everywhere, so its local mean
    shows the bias: each round takes the bright half of the head (the white
    matter, once corrected by the previous round's estimate; dark lesions are
    left out), averages its log intensity in cells of ``cell`` voxels, smooths
    that over neighbouring cells, and divides it out. (Written by hand: N4, the
    usual tool, lives in ANTs/SimpleITK, and is slower than this whole model's
    prediction; this simple estimate is what we need here.)

    Returns
    -------
    ndarray of float32
        Log bias on the coarse grid (mean 0 over the head); see
        :func:`bias_on`.
    """
    log_image = np.log(np.maximum(pooled, 1e-6))
    head_weight = downsample(head.astype(np.float32), cell)
    log_bias = np.zeros(head_weight.shape, np.float32)
    if not head.any():
        return log_bias
    for _ in range(rounds):  # 0 rounds: no correction
        corrected = log_image - bias_on_grid(log_bias, pooled.shape, cell)
        low, high = np.percentile(corrected[head], [50, 98])
        white = (head & (corrected >= low) & (corrected <= high)).astype(np.float32)
        # Normalized convolution: a weighted local mean, weights = white matter.
        total = ndimage.gaussian_filter(
            downsample(white * log_image, cell), sigma_cells
        )
        weight = ndimage.gaussian_filter(downsample(white, cell), sigma_cells)
        known = weight > 1e-3
        log_bias = np.where(known, total / np.maximum(weight, 1e-3), 0.0)
        if not known.all():  # far from any white matter: the nearest estimate
            nearest = ndimage.distance_transform_edt(
                ~known, return_distances=False, return_indices=True
            )
            log_bias = log_bias[tuple(nearest)]
        log_bias = log_bias - np.average(log_bias, weights=head_weight + 1e-9)
        log_bias = log_bias.astype(np.float32)
    return log_bias


def bias_on_grid(log_bias, shape, cell=BIAS_CELL):
    """The log bias on the whole working grid of ``shape``.

    The same values as :func:`bias_on` at every voxel (trilinear, constant
    beyond the outer cell centres), but 10 times faster: torch's upsampling.
    """
    coarse = torch.from_numpy(np.ascontiguousarray(log_bias, np.float32))
    fine = F.interpolate(
        coarse[None, None], scale_factor=cell, mode="trilinear", align_corners=False
    )[0, 0]
    return fine[: shape[0], : shape[1], : shape[2]].numpy()


def bias_on(log_bias, coordinates, cell=BIAS_CELL):
    """The log bias at working-voxel ``coordinates`` (3 arrays), trilinearly."""
    # Cell k covers working voxels cell*k ... cell*k + cell - 1.
    return ndimage.map_coordinates(
        log_bias,
        [(np.asarray(c, np.float32) + 0.5) / cell - 0.5 for c in coordinates],
        order=1,
        mode="nearest",
    )


def mirrored_coordinates(coordinates, data_side_x, factor):
    """Where, in the unmirrored working grid, the mirror channel's voxels come from.

    The mirror is pooled from the 1 mm volume flipped on x: its working voxel
    ``i`` holds the 1 mm voxels whose centre is at working position
    ``data_side_x / factor - 1 - i``.
    """
    x, *others = coordinates
    return [data_side_x / factor - 1 - np.asarray(x, np.float32), *others]


def corrected_pooled(volume, factor, correct_bias=True):
    """Pool a volume to working resolution and divide it by its bias field.

    Returns
    -------
    corrected : ndarray of float32
        The pooled, bias-corrected volume.
    head : ndarray of bool
        Where the head is.
    statistics : (float, float)
        Mean and sd of the head's corrected intensities (for z-scores).
    log_bias : ndarray of float32
        The log bias field on its coarse grid (zero without ``correct_bias``),
        kept to correct patches and the mirror the same way.
    """
    pooled = downsample(volume, factor)
    rounds = 4 if correct_bias else 0  # no round: a zero field
    log_bias = white_matter_bias(pooled, head_mask(pooled), rounds=rounds)
    corrected = pooled / np.exp(bias_on_grid(log_bias, pooled.shape))
    head, mean, sd = pooled_statistics(corrected)
    return corrected, head, (mean, sd), log_bias


def corrected_mirror(volume, factor, log_bias):
    """The left-right mirror at working resolution, corrected by the mirrored bias.

    Mirrored at 1 mm, then pooled: the MNI grid is symmetric about its middle
    x voxel, so the pooled mirror lines up with the pooled image.
    """
    mirror = downsample(volume[::-1], factor)
    mirrored = mirrored_coordinates(np.indices(mirror.shape), volume.shape[0], factor)
    return mirror / np.exp(bias_on(log_bias, mirrored))


def z_scored_channels(volume, factor, mirror_channel=True, correct_bias=True):
    """Corrected image (and mirror), z-scored inside the head and clipped to +-5.

    Returns
    -------
    image : ndarray of float32, shape (1 or 2, x, y, z)
    head : ndarray of bool
    statistics, log_bias
        As :func:`corrected_pooled` returns them.
    """
    corrected, head, (mean, sd), log_bias = corrected_pooled(
        volume, factor, correct_bias
    )
    channels = [corrected]
    if mirror_channel:
        channels.append(corrected_mirror(volume, factor, log_bias))
    # The mirror is scaled like the image, so that the two compare.
    image = np.clip((np.stack(channels) - mean) / sd, -5.0, 5.0)
    return image.astype(np.float32), head, (mean, sd), log_bias


def prepare(
    volume,
    factor,
    template=None,
    mirror_channel=True,
    correct_bias=True,
    standard_landmarks=None,
):
    """Pool a volume to working resolution, correct and normalize it.

    Returns
    -------
    image : ndarray of float32, shape (channels, x, y, z)
        Bias-corrected intensities, z-scored inside the head (scanners and
        cohorts scale them differently) and, given ``standard_landmarks``,
        histogram-standardized; with ``mirror_channel``, the left-right
        mirror image as a second channel: most strokes are one-sided, so a
        lesion looks unlike its mirror, while ventricles and sulci are about
        symmetric; then the template, when given.
    head : ndarray of bool, shape (x, y, z)
        Where the head is: prediction only looks at the box around it.
    """
    image, head, _, _ = z_scored_channels(volume, factor, mirror_channel, correct_bias)
    if standard_landmarks is not None:
        image = standardize_histogram(
            image, head_landmarks(image[0], head), standard_landmarks
        )
    if template is not None:
        image = np.concatenate([image, template[None]])
    return image.astype(np.float32), head


#: Where the histogram landmarks sit: the 1st, 5th, 10th, 20th ... 90th,
#: 95th and 99th percentiles of the head's intensities.
LANDMARK_LEVELS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def head_landmarks(image, head):
    """The head's intensities at :data:`LANDMARK_LEVELS`, strictly increasing."""
    values = image[head] if head.any() else image.ravel()
    landmarks = np.quantile(values, LANDMARK_LEVELS)
    # Few distinct intensities can repeat a quantile: keep them apart.
    steps = np.arange(landmarks.size) * 1e-4
    return np.maximum.accumulate(landmarks + steps).astype(np.float32)


def standardize_histogram(image, landmarks, standard_landmarks):
    """Map a head's histogram landmarks onto the training set's, piece by piece.

    Scanners map tissues to intensities by different curves: contrast
    (gamma), grey matter or fluid brighter or darker, scale and offset.
    z-scoring undoes only scale and offset. Histogram standardization (Nyul
    and Udupa, 1999) also bends the curve back: the intensities between two
    landmarks (say the 20th and 30th percentiles of the head) are mapped
    linearly onto the same landmarks of the average training subject, so
    that each tissue lands where it does in training. Beyond the outer
    landmarks the outer pieces continue; the result is clipped to +-5.
    (TorchIO's ``HistogramStandardization`` does this to whole images read
    from files; here the same map is also applied to each training patch,
    with its subject's landmarks, so a few lines of numpy.)
    """
    mapped = np.interp(image, landmarks, standard_landmarks)
    slopes = np.diff(standard_landmarks) / np.diff(landmarks)
    mapped = np.where(
        image < landmarks[0],
        standard_landmarks[0] + (image - landmarks[0]) * slopes[0],
        mapped,
    )
    mapped = np.where(
        image > landmarks[-1],
        standard_landmarks[-1] + (image - landmarks[-1]) * slopes[-1],
        mapped,
    )
    return np.clip(mapped, -5.0, 5.0).astype(np.float32)


def pad_to_at_least(volume, sizes, mode="edge"):
    """Pad the end of the 3 spatial (last) axes to at least ``sizes`` (or one int)."""
    sizes = np.broadcast_to(sizes, 3)
    padding = [(0, 0)] * (volume.ndim - 3)
    padding += [
        (0, max(0, int(size) - side))
        for size, side in zip(sizes, volume.shape[-3:], strict=True)
    ]
    return np.pad(volume, padding, mode=mode)


def working_factor(voxel_volume_ml, working_voxel_mm):
    """Integer pooling factor from the data's voxel size to ``working_voxel_mm``."""
    voxel_mm = (voxel_volume_ml * 1000.0) ** (1 / 3)
    return max(1, round(working_voxel_mm / voxel_mm))


def channels_last(tensor):
    """Channels-last memory layout: 2-3 times faster 3D convolutions on CPU."""
    return tensor.contiguous(memory_format=torch.channels_last_3d)


def pick_device(name=None):
    """``name`` ("cuda", "cpu"), or None: CUDA when there is a GPU, else CPU."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "small_cnn: device='cuda' but no CUDA GPU is visible here; use "
            "device=None (CUDA when there is one, else CPU) or device='cpu'."
        )
    if device.type == "cpu":
        torch.set_num_threads(available_cpus())
    return device


def is_memory_mapped(array):
    """Whether ``array`` is a view of a memory-mapped file (cheap to re-read)."""
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = getattr(array, "base", None)
    return False


# =============================================================================
# Training data: a few hundred kB per subject, patches read when needed
# =============================================================================
def lesion_indices(y, i):
    """Flat indices of the lesion voxels of ``y[i]``, without a dense copy if we can.

    The kit's ``y`` keeps its masks sparse (``y.sparse``); any other sequence
    of boolean masks works too.
    """
    sparse = getattr(y, "sparse", None)
    if sparse is not None:
        return np.asarray(sparse[i].indices)
    return np.flatnonzero(np.asarray(y[i]))


def pooled_lesions(indices, data_shape, factor):
    """The lesion at working resolution, grouped lesion by lesion.

    Parameters
    ----------
    indices : ndarray of int
        Flat indices of the lesion voxels on the data's grid.
    data_shape : tuple of int
    factor : int
        Pooling factor (blocks of ``factor`` voxels per axis, smaller at the
        far edges, as :func:`downsample` pools).

    Returns
    -------
    voxels : ndarray of int32
        Flat working-grid indices of the voxels that hold some lesion, sorted
        by lesion (3D connected component, face connectivity).
    fractions : ndarray of uint8
        Share of each of these voxels that is lesion, in 255ths (8 bits are
        plenty for a share of 8, 27 or 64 small voxels).
    starts : ndarray of int32
        Lesion ``k`` is ``voxels[starts[k]:starts[k + 1]]``. Patch centres are
        drawn lesion by lesion: drawn voxel by voxel, a 100 mL lesion would be
        picked 500 times as often as a 0.2 mL one.
    """
    data_shape = np.asarray(data_shape)
    shape = -(-data_shape // factor)
    blocks = np.stack(np.unravel_index(indices, tuple(data_shape))) // factor
    flat = np.ravel_multi_index(tuple(blocks), tuple(shape))
    counts = np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape)
    # Voxels per block: factor**3, fewer at the far edge of an odd side.
    sides = [
        np.minimum(factor, n - factor * np.arange(m))
        for n, m in zip(data_shape, shape, strict=True)
    ]
    fraction = counts / np.einsum("i,j,k->ijk", *sides)
    labels, count = ndimage.label(counts > 0)
    voxels = np.flatnonzero(labels)
    voxels = voxels[np.argsort(labels.ravel()[voxels], kind="stable")]
    starts = np.searchsorted(labels.ravel()[voxels], np.arange(1, count + 2))
    fractions = np.round(fraction.ravel()[voxels] * 255).astype(np.uint8)
    return voxels.astype(np.int32), fractions, starts.astype(np.int32)


class TrainingSubjects:
    """What ``fit`` keeps of each training subject, and patches cut on demand.

    Holding every training volume at 2 mm took about 10 MB a subject (image,
    mirror, template, lesion fraction, head indices): 6 GB for ATLAS's 524
    training subjects of a fold. Here each subject keeps only its head mask
    (one bit a working voxel), the mean and sd of its head's intensities, and
    its lesion voxels (sparse). A patch is cut from ``X[i]`` when it is drawn:
    the kit's volume cache maps a decompressed ``.npy`` file, so this reads a
    few MB from the page cache, not the whole volume. The mirror channel is
    cut from the same mapped volume; the template is held once.

    Parameters
    ----------
    X, y : image and mask sequences
    factor : int
        Pooling factor from the data's voxels to working voxels.
    """

    def __init__(self, X, y, factor, correct_bias=True):
        self.X, self.factor = X, factor
        self.landmarks = []
        self.stored_images = None  # working-resolution copies, when X is not mapped
        self.head_bits, self.head_boxes, self.statistics = [], [], []
        self.lesion_voxels, self.lesion_fractions = [], []
        self.lesion_starts = []
        self.log_biases = []
        # The first read of a volume fills the cache; the second maps it.
        X[0]
        if not is_memory_mapped(X[0]):
            # Volumes decoded at every read (no writable cache): keep pooled
            # copies instead, at about 4 MB a subject at 2 mm.
            print(
                "small_cnn: the volumes are not memory-mapped; keeping "
                "pooled copies in memory",
                flush=True,
            )
            self.stored_images = []
        for i in range(len(X)):
            volume = X[i]
            image, head, statistics, log_bias = z_scored_channels(
                volume, factor, self.stored_images is not None, correct_bias
            )
            self.shape, self.data_side_x = head.shape, volume.shape[0]
            self.log_biases.append(log_bias)
            self.statistics.append(statistics)
            self.landmarks.append(head_landmarks(image[0], head))
            self.head_bits.append(np.packbits(head.ravel()))
            corners = np.argwhere(head) if head.any() else np.zeros((1, 3), int)
            self.head_boxes.append((corners.min(axis=0), corners.max(axis=0) + 1))
            voxels, fractions, starts = pooled_lesions(
                lesion_indices(y, i), volume.shape, factor
            )
            self.lesion_voxels.append(voxels)
            self.lesion_fractions.append(fractions)
            self.lesion_starts.append(starts)
            if self.stored_images is not None:
                self.stored_images.append(image.astype(np.float16))

    def held_bytes(self):
        """Bytes held per subject (what grows with the training set)."""
        arrays = [*self.head_bits, *self.lesion_voxels, *self.lesion_fractions]
        arrays += self.log_biases
        arrays += self.stored_images or []
        return sum(array.nbytes for array in arrays) / len(self.head_bits)

    def random_centre(self, subject, rng, lesion_fraction):
        """A lesion voxel (with probability ``lesion_fraction``), else a head voxel."""
        lesion = self.lesion_voxels[subject]
        if lesion.size and rng.random() < lesion_fraction:
            starts = self.lesion_starts[subject]
            which = rng.integers(len(starts) - 1)
            voxel = lesion[rng.integers(starts[which], starts[which + 1])]
            return np.unravel_index(voxel, self.shape)
        low, high = self.head_boxes[subject]
        bits = self.head_bits[subject]
        for _ in range(100):  # the head fills about half of its box
            centre = rng.integers(low, np.maximum(high, low + 1))
            flat = np.ravel_multi_index(centre, self.shape)
            if bits[flat >> 3] & (128 >> (flat & 7)):
                return tuple(centre)
        return tuple(centre)

    def image_patch(self, subject, corner, size, mirror_channel):
        """Normalized image (and mirror) channels of a patch, shape (c, <=size...)."""
        window = tuple(slice(c, c + size) for c in corner)
        if self.stored_images is not None:
            image = self.stored_images[subject][(slice(None), *window)]
            return image[: 1 + mirror_channel].astype(np.float32)
        f = self.factor
        volume = self.X[subject]
        window_1mm = tuple(slice(c * f, (c + size) * f) for c in corner)
        # Blocks start at multiples of f: the same pooling as the whole volume.
        image = downsample(volume[window_1mm], f)
        grid = np.indices(image.shape) + np.reshape(corner, (3, 1, 1, 1))
        log_bias = self.log_biases[subject]
        channels = [image / np.exp(bias_on(log_bias, grid))]
        if mirror_channel:
            mirrored = mirrored_coordinates(grid, self.data_side_x, f)
            mirror = downsample(volume[::-1][window_1mm], f)
            channels.append(mirror / np.exp(bias_on(log_bias, mirrored)))
        mean, sd = self.statistics[subject]
        return np.clip((np.stack(channels) - mean) / sd, -5.0, 5.0)

    def target_patch(self, subject, corner, sides):
        """Lesion fraction of the patch's voxels, from the sparse lesion voxels."""
        target = np.zeros(sides, np.float32)
        coordinates = np.stack(
            np.unravel_index(self.lesion_voxels[subject], self.shape)
        )
        offset = coordinates - np.asarray(corner)[:, None]
        inside = np.all((offset >= 0) & (offset < np.asarray(sides)[:, None]), axis=0)
        target[tuple(offset[:, inside])] = self.lesion_fractions[subject][inside] / 255
        return target


def augment_intensities(channels, relative_sd, rng):
    """Vary intensities as scanners and cohorts do (image and mirror channels).

    Works on intensities relative to the head's mean (1 = average head
    tissue), then z-scores again: a contrast curve (gamma), a smooth bias
    field, blur (as in low-resolution scans), and Gaussian or Rician noise.
    """
    relative = np.maximum(1.0 + channels * relative_sd, 0.0)
    if rng.random() < 0.7:
        # A random monotone contrast curve through a few knots: scanners move
        # fluid, grey and white matter each by its own amount, which one
        # gamma curve cannot do.
        knots = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 3.0])
        steps = np.diff(knots) * np.exp(rng.normal(0.0, 0.3, knots.size - 1))
        relative = np.interp(relative, knots, np.r_[0.0, np.cumsum(steps)])
    if rng.random() < 0.5:
        relative = relative ** rng.uniform(0.6, 1.6)
    if rng.random() < 0.5:  # a linear bias field: up to +-25% across the patch
        axes = [np.linspace(-0.5, 0.5, side) for side in channels.shape[1:]]
        grid = np.meshgrid(*axes, indexing="ij")
        gradient = sum(rng.uniform(-0.5, 0.5) * g for g in grid)
        relative = relative * np.exp(gradient)[None]
    if rng.random() < 0.25:
        sigma = rng.uniform(0.3, 1.0)
        relative = np.stack([ndimage.gaussian_filter(c, sigma) for c in relative])
    if rng.random() < 0.5:
        level = rng.uniform(0.0, 0.1)
        noise = rng.normal(0.0, level, (2, *relative.shape))
        if rng.random() < 0.5:  # Rician: the magnitude of a noisy complex signal
            relative = np.hypot(relative + noise[0], noise[1])
        else:
            relative = relative + noise[0]
    return np.clip((relative - 1.0) / relative_sd, -5.0, 5.0)


def fade_lesions(image, target, max_fade, rng):
    """Bring lesion voxels part of the way to the tissue around them.

    Chronic lesions range from cavities as dark as fluid to gliotic scars
    not far from grey matter, and some cohorts' contrast leaves them faint.
    A fade ``u`` drawn in ``[0, max_fade]`` moves each lesion voxel's
    intensity by ``u`` times its lesion fraction towards the median of a
    2-voxel ring around the lesion (image channel only); the border is
    sometimes blurred, as in more diffuse lesions. The target does not
    change: a faint lesion is still a lesion.
    """
    lesion = target > 0.5
    if max_fade <= 0 or not lesion.any():
        return image
    # Tissue only: partial-volume border voxels (0 < fraction <= 0.5) are left out.
    ring = ndimage.binary_dilation(lesion, iterations=2) & (target == 0)
    if not ring.any():
        return image
    weight = target * rng.uniform(0.0, max_fade)
    if rng.random() < 0.5:
        weight = ndimage.gaussian_filter(weight, rng.uniform(0.3, 1.0))
    level = np.median(image[0][ring])
    image = image.copy()
    image[0] += weight * (level - image[0])
    return image


def shift_by_up_to(array, shift, rng):
    """Roll the 3 spatial axes by random whole voxels in ``[-shift, shift]``."""
    if shift == 0:
        return array
    offsets = tuple(int(o) for o in rng.integers(-shift, shift + 1, 3))
    return np.roll(array, offsets, axis=(-3, -2, -1))


# =============================================================================
# Prediction: MONAI's Gaussian-blended sliding window, flip averaging
# =============================================================================
def head_box(head, margin):
    """Slices of the bounding box of the head, widened by ``margin`` voxels."""
    if not head.any():
        return tuple(slice(0, side) for side in head.shape)
    corners = np.argwhere(head)
    low = np.maximum(corners.min(axis=0) - margin, 0)
    high = np.minimum(corners.max(axis=0) + 1 + margin, head.shape)
    return tuple(slice(a, b) for a, b in zip(low, high, strict=True))


@torch.no_grad()
def predict_probability(
    network, image, head, device, window_size=16, overlap=0.5, windows_per_batch=32
):
    """Lesion probability of every voxel of ``image`` (working resolution).

    Only the box around the head is computed (about half of the MNI grid);
    outside the head the probability is 0. A box larger than ``window_size``
    is cut into overlapping windows whose probabilities MONAI blends with
    Gaussian weights (the centre of a window sees the most context). Windows
    that hold no head voxel are not computed: they would only add weight
    outside the head, where the probability is 0 anyway.
    """
    box = head_box(head, margin=4)
    crop = image[(slice(None), *box)]
    # Sides rounded up to a multiple of what the network pools by (8 for 3
    # poolings by 2; any side for a network that does not pool).
    multiple = getattr(network, "size_multiple", 1)
    sides = [-(-side // multiple) * multiple for side in crop.shape[1:]]
    crop = torch.from_numpy(pad_to_at_least(crop, sides)).to(device)[None]
    head_crop = pad_to_at_least(head[box], sides, "constant")

    def window_probabilities(windows, places):
        # places[k]: (batch, channel, x, y, z) slices of window k in the crop.
        probability = torch.zeros((len(windows), 1, *windows.shape[2:]), device=device)
        in_head = [bool(head_crop[tuple(place[2:])].any()) for place in places]
        if any(in_head):
            chosen = torch.tensor(in_head, device=device)
            logits = network(channels_last(windows[chosen]))
            probability[chosen] = torch.sigmoid(logits)
        return probability

    probability = sliding_window_inference(
        crop,
        roi_size=[min(window_size, side) for side in sides],
        sw_batch_size=windows_per_batch,
        predictor=window_probabilities,
        overlap=overlap,
        mode="gaussian",
        with_coord=True,
    )[0, 0]
    full = torch.zeros(head.shape, device=device)
    full[box] = probability[tuple(slice(0, part.stop - part.start) for part in box)]
    # Lesions are inside the head. Outside, the image is dark and its mirror
    # may be bright (no two heads are exactly symmetric): it looks like a
    # lesion to the network, so rule it out.
    return full * torch.from_numpy(head).to(device)


def shift_probability(probability, threshold):
    """Shift probabilities in logit space so that ``threshold`` becomes 0.5.

    The order of the voxels is kept; only where the cut falls changes.
    """
    logit = torch.logit(probability.clamp(1e-6, 1 - 1e-6))
    return torch.sigmoid(logit - float(np.log(threshold / (1 - threshold))))


def weaken_unsure_lesions(probability, min_peak):
    """Halve the probability of predicted lesions that never reach ``min_peak``.

    A predicted lesion is a connected component of ``probability >= 0.5``
    (face connectivity, as scored). Faint blobs far from the lesion are the
    network's typical false positives; halving keeps their order, so that a
    blend of several models can still bring them back.
    """
    if min_peak <= 0.5:
        return probability
    labels, count = ndimage.label(probability >= 0.5)
    if count:
        # The peak of each blob, from its own voxels only (ndimage.maximum
        # would sort the whole volume: a second per subject at 1 mm).
        inside = labels > 0
        peaks = np.zeros(count + 1, probability.dtype)
        np.maximum.at(peaks, labels[inside], probability[inside])
        unsure = peaks < min_peak
        unsure[0] = False
        probability[unsure[labels]] *= 0.5
    return probability


# =============================================================================
# The estimator
# =============================================================================
class SmallUNet:
    """A small 3D U-Net trained on 2 mm patches; predicts at 1 mm.

    Every knob is a parameter, stored on the estimator (as in scikit-learn), so
    a fitted, pickled model predicts the same whatever the source file says.

    Parameters
    ----------
    epochs, patches_per_epoch, batch_size : int
        The training budget: ``epochs * patches_per_epoch // batch_size`` steps.
    patch_size : int
        Patch side in working voxels, a multiple of 8.
    learning_rate : float
        AdamW's, with cosine decay to 0 over the training.
    working_voxel_mm : float
        Train and predict on voxels of this size (1 mm data pooled by 2).
    base_channels : int
        Channels of the network's first level; doubled at each of 3 poolings.
    mirror_channel, template_channel : bool
        Also give the network the left-right mirror image, and the MNI152
        template (what a healthy brain looks like at each place).
    lesion_patch_fraction : float
        Share of patches centred on a lesion (lesions drawn one by one, so
        that small ones are seen as often as large ones), the lesion anywhere
        in the central half of the patch.
    bias_correction : bool
        Divide each image by its white-matter bias field before anything else
        (see :func:`white_matter_bias`).
    histogram_standardization : bool
        After z-scoring, map each head's intensity histogram onto the
        training set's (see :func:`standardize_histogram`).
    intensity_augmentation : bool
        Vary contrast, bias, blur and noise (see :func:`augment_intensities`).
    misregistration_voxels : int
        Shift the template and mirror channels by up to this many working
        voxels against the image (registration is never perfect).
    lesion_fade : float
        In half of the patches, move lesion voxels up to this share of the
        way to the tissue around them (see :func:`fade_lesions`); 0: never.
        Off by default: 0.8 lost in the full ``ramp-test`` (see Try next).
    window_size : int or None
        Side of the sliding windows at prediction, in working voxels; None:
        ``patch_size``. The network then sees at prediction the context it
        was trained on: on whole heads (128 holds one at 2 mm), some fits
        light up false lesions everywhere.
    window_overlap, windows_per_batch : float, int
        Overlap of neighbouring windows (0.5: every voxel is seen in 8
        windows, their centres weighing most), and windows per network call.
    flip_averaging : bool
        Average the predictions of the image and of its left-right flip.
    n_calibration_subjects : int
        Training subjects on which the decision threshold is tuned.
    min_lesion_peak : float
        Predicted lesions whose probability never reaches this are halved
        (see :func:`weaken_unsure_lesions`); 0.5 or less keeps them all.
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
    data_shape_ : tuple of int
        Grid of the training volumes; prediction needs the same grid.
    template_ : ndarray of float32 or None
        The MNI152 template on the working grid (with ``template_channel``).
    standard_landmarks_ : ndarray of float32 or None
        The training subjects' average histogram landmarks (with
        ``histogram_standardization``): every image is mapped onto them.
    threshold_ : float
        Decision threshold tuned on training subjects; ``predict_proba``
        shifts the probabilities so that it becomes 0.5.
    held_bytes_per_subject_ : float
        Memory that training held per training subject.
    losses_ : list of float
        Mean loss of each epoch.
    n_parameters_ : int
        Trainable weights of the network.
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
        seed=0,
        device=None,
    ):
        self.epochs = epochs
        self.patches_per_epoch = patches_per_epoch
        self.batch_size = batch_size
        self.patch_size = patch_size
        self.learning_rate = learning_rate
        self.working_voxel_mm = working_voxel_mm
        self.base_channels = base_channels
        self.mirror_channel = mirror_channel
        self.template_channel = template_channel
        self.lesion_patch_fraction = lesion_patch_fraction
        self.bias_correction = bias_correction
        self.histogram_standardization = histogram_standardization
        self.intensity_augmentation = intensity_augmentation
        self.misregistration_voxels = misregistration_voxels
        self.lesion_fade = lesion_fade
        self.window_size = window_size
        self.window_overlap = window_overlap
        self.windows_per_batch = windows_per_batch
        self.flip_averaging = flip_averaging
        self.n_calibration_subjects = n_calibration_subjects
        self.min_lesion_peak = min_lesion_peak
        self.seed = seed
        self.device = device

    # -- training patches -------------------------------------------------------
    def _patch(self, subjects, rng):
        """One augmented training patch and its lesion fraction."""
        size = self.patch_size
        subject = rng.integers(len(subjects.head_bits))
        centre = subjects.random_centre(subject, rng, self.lesion_patch_fraction)
        jitter = rng.integers(-size // 4, size // 4 + 1, 3)
        corner = [
            int(np.clip(c - size // 2 + j, 0, max(side - size, 0)))
            for c, j, side in zip(centre, jitter, subjects.shape, strict=True)
        ]
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
            image = standardize_histogram(
                image, subjects.landmarks[subject], self.standard_landmarks_
            )
        # Misregistration: the mirror (if any) and the template slide against
        # the image.
        shift = self.misregistration_voxels
        channels = [image[:1], shift_by_up_to(image[1:], shift, rng)]
        if self.template_channel:
            window = tuple(slice(c, c + size) for c in corner)
            channels.append(shift_by_up_to(self.template_[window][None], shift, rng))
        patch = pad_to_at_least(np.concatenate(channels).astype(np.float32), size)
        target = pad_to_at_least(target, size, "constant")
        # Axis x is left-right: the flipped patch is the mirrored brain's
        # (the template is symmetric).
        if rng.random() < 0.5:
            patch, target = patch[:, ::-1], target[::-1]
        return np.ascontiguousarray(patch), np.ascontiguousarray(target)

    def _batch(self, subjects, rng):
        pairs = [self._patch(subjects, rng) for _ in range(self.batch_size)]
        patches, targets = zip(*pairs, strict=True)
        targets = np.stack(targets)[:, None]  # (batch, 1, x, y, z)
        return torch.from_numpy(np.stack(patches)), torch.from_numpy(targets)

    # -- fit ------------------------------------------------------------------
    def fit(self, X, y):
        if len(y) and isinstance(y[0], SparseMask):
            # problem.get_train_data() gives the masks sparse; the workflow
            # passes them as a MaskSequence (dense on access). Numpy would
            # turn a SparseMask silently into a single True, so wrap it.
            y = MaskSequence(y)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        device = pick_device(self.device)
        start = time.perf_counter()
        self.factor_ = working_factor(X.voxel_volume_ml, self.working_voxel_mm)
        self.data_shape_ = tuple(X.volume_shape)
        self.template_ = (
            template_on_grid(X.affine, self.data_shape_, self.factor_)
            if self.template_channel
            else None
        )
        subjects = TrainingSubjects(X, y, self.factor_, self.bias_correction)
        # The standard scale: the training subjects' average landmarks.
        self.standard_landmarks_ = (
            np.mean(subjects.landmarks, axis=0).astype(np.float32)
            if self.histogram_standardization
            else None
        )
        self.held_bytes_per_subject_ = subjects.held_bytes()
        print(
            f"small_cnn: {len(X)} subjects read in {time.perf_counter() - start:.1f}"
            f" s ({self.held_bytes_per_subject_ / 1e3:.0f} kB held per subject); "
            f"training on {device}",
            flush=True,
        )
        network = UNet3D(**self._architecture())
        network = network.to(device, memory_format=torch.channels_last_3d)
        self.n_parameters_ = sum(weight.numel() for weight in network.parameters())
        optimizer = torch.optim.AdamW(network.parameters(), lr=self.learning_rate)
        steps_per_epoch = max(1, self.patches_per_epoch // self.batch_size)
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
        network.train()
        self.losses_ = []
        for epoch in range(self.epochs):
            start, losses = time.perf_counter(), []
            for _ in range(steps_per_epoch):
                patches, targets = self._batch(subjects, rng)
                logits = network(channels_last(patches.to(device)))
                loss = loss_function(logits, targets.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
            self.losses_.append(float(np.mean(losses)))
            print(
                f"small_cnn: epoch {epoch + 1:2d}/{self.epochs}  loss "
                f"{self.losses_[-1]:.3f}  {time.perf_counter() - start:.1f} s",
                flush=True,
            )
        # Keep the weights on CPU: picklable, and loadable without a GPU.
        self.state_dict_ = {
            name: tensor.detach().cpu() for name, tensor in network.state_dict().items()
        }
        self._network = network.eval()
        self.threshold_ = self._best_threshold(X, y, device)
        return self

    def _architecture(self):
        channels = 1 + bool(self.mirror_channel) + bool(self.template_channel)
        return dict(in_channels=channels, base_channels=self.base_channels)

    def _best_threshold(self, X, y, device):
        """The threshold in THRESHOLDS with the best mean Dice on a few subjects.

        The subjects are training subjects, evenly spread over ``X``; Dice is
        computed at the data's resolution, as it is scored.
        """
        count = min(len(X), self.n_calibration_subjects)
        subjects = np.unique(np.linspace(0, len(X) - 1, count).round()).astype(int)
        network = self._trained_network(device)
        dice_sums = np.zeros(len(THRESHOLDS))
        for i in subjects:
            probability = self._probability_on_data_grid(network, X[i], device)
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
            network = UNet3D(**self._architecture())
            network.load_state_dict(self.state_dict_)
            self._network = network.eval()
        return network.to(device, memory_format=torch.channels_last_3d)

    def _probability_on_data_grid(self, network, volume, device):
        """Unshifted lesion probability of one volume, on the data's grid."""
        image, head = prepare(
            volume,
            self.factor_,
            self.template_,
            self.mirror_channel,
            # Models pickled before these knobs existed had neither.
            correct_bias=getattr(self, "bias_correction", False),
            standard_landmarks=getattr(self, "standard_landmarks_", None),
        )
        windows = dict(
            # None: windows as large as the training patches (see the class).
            window_size=self.window_size or self.patch_size,
            overlap=self.window_overlap,
            windows_per_batch=self.windows_per_batch,
        )
        probability = predict_probability(network, image, head, device, **windows)
        if self.flip_averaging:  # the left-right flip, predicted and flipped back
            flipped = predict_probability(
                network, image[:, ::-1].copy(), head[::-1].copy(), device, **windows
            )
            probability = (probability + flipped.flip(0)) / 2
        if self.factor_ > 1:
            # Back to the data's grid: trilinear, then crop the edge padding.
            probability = F.interpolate(
                probability[None, None],
                scale_factor=self.factor_,
                mode="trilinear",
                align_corners=False,
            )[0, 0]
        shape = self.data_shape_
        return probability[: shape[0], : shape[1], : shape[2]].clamp(0, 1)

    def predict_proba(self, X):
        """Lesion probability of every voxel, float32 in [0, 1].

        Shifted so that 0.5 is the decision threshold tuned in :meth:`fit`.
        """
        shape = tuple(X.volume_shape)
        if shape != self.data_shape_:
            raise ValueError(
                f"small_cnn was trained on volumes of shape {self.data_shape_} "
                f"but is asked to predict on {shape}: train and predict "
                "on the same grid."
            )
        device = pick_device(self.device)
        network = self._trained_network(device)
        probabilities = np.zeros((len(X), *shape), dtype=np.float32)
        for i in range(len(X)):
            probability = self._probability_on_data_grid(network, X[i], device)
            probability = shift_probability(probability, self.threshold_)
            probabilities[i] = weaken_unsure_lesions(
                probability.cpu().numpy(), self.min_lesion_peak
            )
        return probabilities

    def predict(self, X):
        return self.predict_proba(X) >= 0.5

    def __getstate__(self):
        # Pickle the weights (state_dict_), not the live module.
        state = self.__dict__.copy()
        state.pop("_network", None)
        return state


#: Training budgets. ``ramp-test --quick-test`` uses "quick"; for a CUDA GPU,
#: change the default below to ``budget="gpu"`` (one line).
BUDGETS = {
    # Enough to see it learn in well under a minute a fold: small patches,
    # all holding a lesion, a higher learning rate, no flip averaging.
    "quick": dict(
        epochs=4,
        patches_per_epoch=96,
        patch_size=24,
        learning_rate=3e-3,
        lesion_patch_fraction=1.0,
        n_calibration_subjects=4,
        flip_averaging=False,
        min_lesion_peak=0.6,
        # One pass over the whole head, cheaper than windows: ramp-test
        # --quick-test scored a bagged test Dice of 0.315 in 124 s with
        # 24-voxel windows, 0.336 in 85 s in one pass (with the mirror
        # channel; without it, one pass: 0.584 in 101 s, on a slower machine).
        window_size=128,
    ),
    "cpu": dict(),
    # Longer training and a wider network: 5 times the CPU budget's patches,
    # each about twice as slow on CPU. Measured on one CPU core (29 min a
    # fit; on all 40): test Dice 0.878, unseen cohorts 0.662 and 0.691 (two
    # seeds; see Try next).
    # The device stays None (CUDA when present): a model trained on a GPU
    # must still predict on a laptop.
    "gpu": dict(epochs=50, patches_per_epoch=2800, base_channels=16),
}


QUICK_TEST_NOTE = """small_cnn, quick test: {steps} training steps per fold on small
  patches, enough to see the network start to find lesions (expect a low Dice,
  around 0.3-0.6), not to judge it. The quick test checks that the submission trains,
  predicts and is scored end to end. For the real figures (25 to 35 minutes on
  2 CPU cores): ramp-test --submission small_cnn"""


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
