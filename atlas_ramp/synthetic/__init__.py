"""The synthetic ATLAS-like sample: real anatomy, synthetic subjects and lesions.

The real ATLAS R2.0 data cannot be redistributed, so the kit's default data are
generated. Every synthetic subject starts from the MNI152 2009a symmetric T1
template and its grey/white matter maps, which ``nilearn`` ships inside its
package (the grid of ATLAS: 197 x 233 x 189 voxels of 1 mm). Then, in this order:

1. **Brain changes, in template space.** Atrophy (widened sulci and enlarged
   ventricles), white-matter hypointensities of vascular origin (periventricular
   caps and bands, bilateral, milder than a stroke lesion) and perivascular
   spaces (tiny elongated dark dots in the basal ganglia and the white matter).
   These are *distractors*: they are dark like lesions, and the ATLAS tracing
   protocol leaves them out of the mask.
2. **A smooth random deformation** of a few millimetres, so that no two subjects
   share the template's exact anatomy.
3. **Chronic stroke lesions, in subject space.** Each lesion is an irregular
   ellipsoid (an ellipsoid whose radius is perturbed by smooth random noise),
   restricted to brain tissue of one hemisphere. Its core is about as dark as
   cerebrospinal fluid and its border fades through a partial-volume rim. The
   mask holds the voxels where the lesion makes up more than half of the voxel,
   as a tracer would draw it.
4. **A scanner, per cohort.** Grey/white contrast and gamma, a smooth
   multiplicative bias field, a Gaussian blur for two cohorts (lower resolution
   acquisitions), Rician noise, and an intensity scale and offset.

Lesion statistics follow the ATLAS training set (Liew et al., Sci. Data 2022):
about 62% of subjects have a single lesion (the others 2-4); lesions are about
25% cortical/white matter, 60% subcortical and 15% cerebellum/brainstem, left and
right equally often; total lesion volume has a median around 5 mL and a heavy
tail up to hundreds of mL. Thresholding the image is a weak baseline on these
data: cerebrospinal fluid, perivascular spaces and lesion cores are equally dark.

Everything is deterministic: a subject depends only on ``(seed, subject index)``,
and its lesions, deformation and distractors do not depend on the ``downsample``
factor, so a subject looks the same at 1 mm and at 4 mm.

One module per concept:

* :mod:`~atlas_ramp.synthetic.anatomy`: the template, tissue maps and regions,
  the grid, downsampling;
* :mod:`~atlas_ramp.synthetic.streams`: which random stream drives what;
* :mod:`~atlas_ramp.synthetic.fields`: smooth random fields (deformation, bias)
  and noise;
* :mod:`~atlas_ramp.synthetic.shapes`: oriented ellipsoids with soft borders;
* :mod:`~atlas_ramp.synthetic.distractors`: atrophy, white-matter
  hypointensities, perivascular spaces;
* :mod:`~atlas_ramp.synthetic.lesions`: lesion plans and drawn lesions;
* :mod:`~atlas_ramp.synthetic.scanners`: cohort scanner profiles;
* :mod:`~atlas_ramp.synthetic.generalizability`: the unseen cohorts of the
  generalizability split, and how they differ from the training ones;
* :mod:`~atlas_ramp.synthetic.subject`: one subject, all of the above in order;
* :mod:`~atlas_ramp.synthetic.files`: NIfTI files and BIDS side files;
* :mod:`~atlas_ramp.synthetic.sample`: planning a sample and the atomic build;
* :mod:`~atlas_ramp.synthetic.workers`: how many worker processes a build uses.

Main entry points
-----------------
:func:`build_sample`
    Write ``train/``, ``test/`` and ``generalizability/`` in the ATLAS R2.0
    layout (used by ``download_data.py``).
:func:`make_subject`
    Generate one subject in memory.
"""

from .anatomy import MAX_DOWNSAMPLE, Anatomy, downsampled_affine, load_anatomy
from .files import (
    GENERATOR_NAME,
    GENERATOR_VERSION,
    GZIP_LEVEL,
    PARTICIPANT_COLUMNS,
    write_subject,
)
from .generalizability import (
    N_GENERALIZABILITY,
    UNSEEN_VARIATION,
    make_unseen_cohort_profiles,
)
from .lesions import (
    LOCATION_SHARES,
    LOCATIONS,
    N_LESIONS_SHARES,
    LesionPlan,
    sample_lesion_plan,
)
from .sample import (
    COMPLETION_MARKER,
    SPLITS,
    SubjectRecord,
    build_sample,
    plan_generalizability,
    plan_subjects,
)
from .scanners import BLURRED_COHORTS, CohortProfile, make_cohort_profiles
from .streams import subject_seed
from .subject import SubjectVariation, SyntheticSubject, make_subject
from .workers import default_jobs

__all__ = [
    "BLURRED_COHORTS",
    "COMPLETION_MARKER",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "GZIP_LEVEL",
    "LOCATIONS",
    "LOCATION_SHARES",
    "MAX_DOWNSAMPLE",
    "N_GENERALIZABILITY",
    "N_LESIONS_SHARES",
    "PARTICIPANT_COLUMNS",
    "SPLITS",
    "UNSEEN_VARIATION",
    "Anatomy",
    "CohortProfile",
    "LesionPlan",
    "SubjectRecord",
    "SubjectVariation",
    "SyntheticSubject",
    "build_sample",
    "default_jobs",
    "downsampled_affine",
    "load_anatomy",
    "make_cohort_profiles",
    "make_subject",
    "make_unseen_cohort_profiles",
    "plan_generalizability",
    "plan_subjects",
    "sample_lesion_plan",
    "subject_seed",
    "write_subject",
]
