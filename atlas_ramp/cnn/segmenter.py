"""What every patch-trained segmenter of the kit does besides its model:
read the training subjects, calibrate the threshold, predict, pickle.

``submissions/small_cnn/estimator.py`` subclasses :class:`PatchSegmenter` and
writes the model: the network (``build_network``), the patches
(``make_patch``) and the training loop (``fit``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from atlas_ramp.masks import SparseMask
from atlas_ramp.volumes import MaskSequence

from .patches import TrainingSubjects
from .prediction import (
    THRESHOLDS,
    best_threshold,
    final_probability,
    pick_device,
    probability_on_data_grid,
)
from .preparation import template_on_grid, working_factor


def _dense_on_access(y):
    """Masks that read as dense arrays.

    ``get_train_data()`` gives sparse masks; numpy would turn a SparseMask
    silently into a single True, so they are wrapped (dense on access).
    """
    if len(y) and isinstance(y[0], SparseMask):
        return MaskSequence(y)
    return y


class PatchSegmenter:
    """Base class: the kit's side of a segmenter trained on patches.

    The subclass sets, as parameters, ``working_voxel_mm``, ``template_channel``,
    ``mirror_channel``, ``bias_correction``, ``histogram_standardization``,
    ``patch_size``, ``window_size``, ``window_overlap``, ``windows_per_batch``,
    ``flip_averaging``, ``n_calibration_subjects``, ``min_lesion_peak`` and
    ``device``, and defines ``build_network()``.

    Attributes
    ----------
    factor_ : int
        Pooling factor from the data's voxels to the working voxels.
    data_shape_ : tuple of int
        Grid of the training volumes; prediction needs the same grid.
    template_ : ndarray of float32 or None
        The MNI152 template on the working grid (with ``template_channel``).
    standard_landmarks_ : ndarray of float32 or None
        The training subjects' average histogram landmarks.
    held_bytes_per_subject_ : float
        Memory that training held per training subject.
    state_dict_ : dict of str to Tensor
        The trained weights, on CPU (what is pickled).
    threshold_ : float
        Decision threshold tuned on training subjects; ``predict_proba``
        shifts the probabilities so that it becomes 0.5.
    """

    def build_network(self):
        """The untrained network (``torch.nn.Module``); defined by the subclass."""
        raise NotImplementedError

    def read_training_subjects(self, X, y):
        """Read the training set once: what training keeps, and the fitted scales.

        Sets ``factor_``, ``data_shape_``, ``template_``,
        ``standard_landmarks_`` and ``held_bytes_per_subject_``.

        Returns
        -------
        TrainingSubjects
        """
        y = _dense_on_access(y)
        start = time.perf_counter()
        self.factor_ = working_factor(X.voxel_volume_ml, self.working_voxel_mm)
        self.data_shape_ = tuple(X.volume_shape)
        self.template_ = None
        if self.template_channel:
            self.template_ = template_on_grid(X.affine, self.data_shape_, self.factor_)
        subjects = TrainingSubjects(
            X, y, self.factor_, self.bias_correction, self.mirror_channel
        )
        # The standard scale: the training subjects' average landmarks.
        self.standard_landmarks_ = None
        if self.histogram_standardization:
            landmarks = np.mean(subjects.landmarks, axis=0)
            self.standard_landmarks_ = landmarks.astype(np.float32)
        self.held_bytes_per_subject_ = subjects.held_bytes()
        print(
            f"small_cnn: {len(X)} subjects read in {time.perf_counter() - start:.1f}"
            f" s ({self.held_bytes_per_subject_ / 1e3:.0f} kB held per subject)",
            flush=True,
        )
        return subjects

    def keep_trained(self, network, X, y, device):
        """Keep the trained weights (on CPU) and tune the decision threshold."""
        y = _dense_on_access(y)
        self.state_dict_ = {
            name: tensor.detach().cpu() for name, tensor in network.state_dict().items()
        }
        self._network = network.eval()
        self.threshold_, dice, dice_at_highest, count = best_threshold(
            lambda volume: self.probability_on_data_grid(network, volume, device),
            X,
            y,
            self.n_calibration_subjects,
            device,
        )
        print(
            f"small_cnn: decision threshold {self.threshold_:g} (Dice {dice:.3f} on "
            f"{count} training subjects; {dice_at_highest:.3f} at {THRESHOLDS[-1]:g})",
            flush=True,
        )

    def trained_network(self, device):
        """The trained network on ``device``, rebuilt from ``state_dict_`` if needed."""
        network = getattr(self, "_network", None)
        if network is None:
            network = self.build_network()
            network.load_state_dict(self.state_dict_)
            self._network = network.eval()
        return network.to(device, memory_format=torch.channels_last_3d)

    def probability_on_data_grid(self, network, volume, device):
        """Unshifted lesion probability of one volume, on the data's grid."""
        return probability_on_data_grid(
            network,
            volume,
            device,
            factor=self.factor_,
            data_shape=self.data_shape_,
            template=self.template_,
            mirror_channel=self.mirror_channel,
            correct_bias=self.bias_correction,
            standard_landmarks=self.standard_landmarks_,
            # None: windows as large as the training patches.
            window_size=self.window_size or self.patch_size,
            overlap=self.window_overlap,
            windows_per_batch=self.windows_per_batch,
            flip_averaging=self.flip_averaging,
        )

    def predict_proba(self, X):
        """Lesion probability of every voxel, float32 in [0, 1].

        Shifted so that 0.5 is the decision threshold tuned in ``fit``.
        """
        shape = tuple(X.volume_shape)
        if shape != self.data_shape_:
            raise ValueError(
                f"small_cnn was trained on volumes of shape {self.data_shape_} "
                f"but is asked to predict on {shape}: train and predict "
                "on the same grid."
            )
        device = pick_device(self.device)
        network = self.trained_network(device)
        probabilities = np.zeros((len(X), *shape), dtype=np.float32)
        for i in range(len(X)):
            probability = self.probability_on_data_grid(network, X[i], device)
            probabilities[i] = final_probability(
                probability, self.threshold_, self.min_lesion_peak
            )
        return probabilities

    def predict(self, X):
        """Boolean lesion masks: ``predict_proba(X) >= 0.5``."""
        return self.predict_proba(X) >= 0.5

    def __getstate__(self):
        # Pickle the weights (state_dict_), not the live module.
        state = self.__dict__.copy()
        state.pop("_network", None)
        return state
