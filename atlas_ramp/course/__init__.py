"""On a RAMP server: a course or a Brainhack on ramp-board.

* :mod:`~atlas_ramp.course.instructor`: a course's private (labelled) and
  public data folders (``atlas-ramp instructor``);
* :mod:`~atlas_ramp.course.event_kit`: what an event serves (the kit folder and
  its zip, no data, with ``student_readme.md`` as its README) and the course
  data, with the data-use-agreement checks;
* :mod:`~atlas_ramp.course.server`: deploy an event, launch the dispatcher
  (``atlas-ramp server deploy|dispatch``);
* :mod:`~atlas_ramp.course.dispatcher`: ramp-engine's dispatcher, surviving
  failed submissions and keeping contributivity up to date
  (:mod:`~atlas_ramp.course.contributivity`: ramp-board's blend, in a process of
  its own);
* :mod:`~atlas_ramp.course.ramp_worker`: the conda-free local worker;
  :mod:`~atlas_ramp.course.dask_pool` and :mod:`~atlas_ramp.course.worker_host`:
  a pool of dask workers on other machines;
* :mod:`~atlas_ramp.course.sandbox` and
  :mod:`~atlas_ramp.course.trusted_scoring`: students' code trained where the
  private test masks cannot be read, and scored outside
  (:mod:`~atlas_ramp.course.staging`: what the sandbox is given).

``server``, ``ramp_worker``, ``dispatcher`` and ``dask_pool`` import ramp-board:
they run in the server's environment only. The others import in the kit's
environment too (the dask workers and the tests use them). Nothing outside this
package imports it.
"""
