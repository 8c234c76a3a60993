"""Get the data for the ATLAS stroke-lesion RAMP kit.

Two sources, one entry point:

* ``python download_data.py`` (default, offline): build the synthetic ATLAS-like
  sample (real MNI152 anatomy from nilearn, synthetic subjects and lesions) into
  ``data/train``, ``data/test`` and ``data/generalizability`` (subjects of
  cohorts that train and test never show), in the exact ATLAS R2.0 names and
  layout.
* ``python download_data.py --atlas``: turn the real, encrypted ATLAS R2.0 archive
  (available after signing the data use agreement) into ``data/train``,
  ``data/test`` (a cohort-stratified hold-out of the labelled subjects) and
  ``data/unlabelled`` (the ATLAS Testing subjects, whose masks are hidden).

Run ``python download_data.py --help`` for all options.
"""

from atlas_ramp.download import main

if __name__ == "__main__":
    raise SystemExit(main())
