"""Machinery of the ATLAS v2.0 stroke-lesion RAMP starting kit.

One module per concept, in the order the data flow through them.

Data on disk
    * :mod:`atlas_ramp.bids`: ATLAS/BIDS file names and subject discovery;
    * :mod:`atlas_ramp.grids`: one voxel grid per split, in MNI's RAS orientation;
    * :mod:`atlas_ramp.volumes`: lazy volumes ``X``, sparse masks ``y``, the cache.

Making data
    * :mod:`atlas_ramp.synthetic`: the synthetic ATLAS-like sample (a package:
      anatomy, fields, lesions, distractors, scanners, generalizability, sample);
    * :mod:`atlas_ramp.archive`: the real, encrypted ATLAS R2.0 archive (a package:
      password, openssl, download, untar, layout, install);
    * :mod:`atlas_ramp.atlas_release`: facts about the ATLAS release (URL, SHA-256,
      license) and the side files of a split made from it;
    * :mod:`atlas_ramp.download`: the command line of ``download_data.py``;
    * :mod:`atlas_ramp.instructor`: a course's private and public data.

The challenge
    * :mod:`atlas_ramp.masks`: sparse masks and sparse probabilities;
    * :mod:`atlas_ramp.scores`: Dice and the ATLAS Grand Challenge metrics;
    * :mod:`atlas_ramp.predictions`: ramp-workflow ``Predictions`` and their files;
    * :mod:`atlas_ramp.splits`: cohort-aware hold-out and cross-validation;
    * :mod:`atlas_ramp.workflow`: how a submission is trained and run;
    * :mod:`atlas_ramp.testmode`: whether ``ramp-test --quick-test`` is running;
    * :mod:`atlas_ramp.rules`: small rules the baselines share (head mask,
      threshold shift, small predicted lesions);
    * :mod:`atlas_ramp.cnn`: the small CNN's plumbing (a package: preparation,
      patches, prediction, segmenter); the only module that imports torch.

Looking at results
    * :mod:`atlas_ramp.evaluate`: score a submission on any labelled folder;
    * :mod:`atlas_ramp.breakdown`: per-subject scores, by lesion size and cohort;
    * :mod:`atlas_ramp.report`: the HTML report (also from ``ramp-test``'s saved
      predictions);
    * :mod:`atlas_ramp.figures`: error-coloured slices and the report's figures;
    * :mod:`atlas_ramp.montage`: a contact sheet of a split's subjects;
    * :mod:`atlas_ramp.export`: predictions as BIDS lesion masks.

On a RAMP server (ramp-board; the server's environment only)
    * :mod:`atlas_ramp.event_kit`: what an event serves (the kit folder and its zip,
      no data) and the course data, with the data-use-agreement checks;
    * :mod:`atlas_ramp.server`: deploy an event, launch the dispatcher;
    * :mod:`atlas_ramp.ramp_worker`: ramp-engine workers that need no conda.

Plumbing
    * :mod:`atlas_ramp._io`: safe writing (temporary name, then rename);
    * :mod:`atlas_ramp.machine`: the CPU cores this process may use (portable);
    * :mod:`atlas_ramp.testing`: fixtures for the tests and benchmarks (encrypted
      archives, release trees), never used by the kit itself.
"""

__version__ = "0.1.0"
