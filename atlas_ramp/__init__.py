"""Machinery of the ATLAS v2.0 stroke-lesion RAMP starting kit.

The folder is the map: at the top, what ``problem.py`` and the submissions
import (the data on disk, the challenge, plumbing); each other group is a
sub-package. Layers only import downwards: ``results``, ``course`` and ``cnn``
use the data and the challenge; nothing at the top imports them.

Data on disk (top level)
    * :mod:`atlas_ramp.bids`: ATLAS/BIDS file names and subject discovery;
    * :mod:`atlas_ramp.grids`: one voxel grid per split, in MNI's RAS orientation;
    * :mod:`atlas_ramp.volumes`: lazy volumes ``X``, sparse masks ``y``;
    * :mod:`atlas_ramp.volume_cache`: the decompressed on-disk cache they read.

The challenge (top level)
    * :mod:`atlas_ramp.masks`: sparse masks and sparse probabilities;
    * :mod:`atlas_ramp.scores`: Dice and the ATLAS Grand Challenge metrics;
    * :mod:`atlas_ramp.predictions`: ramp-workflow ``Predictions`` and their files;
    * :mod:`atlas_ramp.splits`: cohort-aware hold-out and cross-validation;
    * :mod:`atlas_ramp.workflow`: how a submission is trained and run;
    * :mod:`atlas_ramp.testmode`: whether ``ramp-test --quick-test`` is running,
      and whether the test split is read unlabelled (in the sandbox);
    * :mod:`atlas_ramp.rules`: small rules the baselines share (head mask,
      threshold shift, small predicted lesions).

Making data (``synthetic/``, ``archive/``)
    * :mod:`atlas_ramp.synthetic`: the synthetic ATLAS-like sample (anatomy,
      fields, lesions, distractors, scanners, generalizability, sample);
    * :mod:`atlas_ramp.archive`: the real, encrypted ATLAS R2.0 archive (release
      facts, password, openssl, fetch, untar, layout, install);
    * :mod:`atlas_ramp.download`: the command line of ``download_data.py``, the
      one entry point for data (at the top: ``download_data.py`` imports it).

Looking at results (``results/``)
    * :mod:`atlas_ramp.results`: evaluate on any labelled folder, per-subject
      breakdown, HTML report, figures, montage, BIDS export.

The small CNN (``cnn/``)
    * :mod:`atlas_ramp.cnn`: the small CNN baseline's plumbing (preparation,
      patches, prediction, segmenter); the only part of the kit that imports
      torch.

On a RAMP server (``course/``)
    * :mod:`atlas_ramp.course`: the instructor's private and public data, the
      event's kit (no data), deployment, the dispatcher and its workers (local
      and a dask pool), contributivity, the sandbox and trusted scoring.

Plumbing (top level, and ``testing/``)
    * :mod:`atlas_ramp.cli`: ``atlas-ramp``, one command line for all of the kit's
      commands (``python -m atlas_ramp`` runs the same);
    * :mod:`atlas_ramp._io`: safe writing (temporary name, then rename);
    * :mod:`atlas_ramp.machine`: the CPU cores this process may use (portable);
    * :mod:`atlas_ramp.testing`: fixtures for the tests and benchmarks (encrypted
      archives, release trees), never used by the kit itself.
"""

__version__ = "0.1.0"
