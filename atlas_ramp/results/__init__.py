"""Looking at results: a submission's scores on any labelled folder, and why.

* :mod:`~atlas_ramp.results.evaluate`: train a submission and score it on any
  labelled folder (``atlas-ramp evaluate``);
* :mod:`~atlas_ramp.results.breakdown`: per-subject scores, by lesion size and
  cohort;
* :mod:`~atlas_ramp.results.report`: the HTML report, also from ``ramp-test``'s
  saved predictions (``atlas-ramp report``);
* :mod:`~atlas_ramp.results.figures`: error-coloured slices and the report's
  figures;
* :mod:`~atlas_ramp.results.montage`: a contact sheet of a split's subjects
  (``atlas-ramp montage``);
* :mod:`~atlas_ramp.results.export`: predictions as BIDS lesion masks
  (``atlas-ramp export``).

These modules use the data and the challenge layers (:mod:`atlas_ramp.volumes`,
:mod:`atlas_ramp.scores`, :mod:`atlas_ramp.workflow`, ...); nothing there
imports them.
"""
