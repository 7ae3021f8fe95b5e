"""Many predictions at once: pinned instances on one node, or a Dask cluster (``af2cpu batch --instances``).

The unit of work is one prediction: a (query, model, seed). ColabFold's
``run()`` still does everything around it (MSA, features, ranking, files,
plots, relax); :mod:`af2cpu_plugin.hooks.colabfold_seam` runs it twice:

1. **plan**: MSAs and features as ColabFold makes them, each prediction's
   inputs written to the :class:`~.store.PredictionStore` and submitted to Dask,
   longest first (:mod:`.dispatch`); nothing of the outputs is written;
2. **write**: ColabFold's ``run()`` again (MSAs reused, not fetched twice),
   whose model runners now take each prediction's result from the store
   (waiting for it if needed) instead of computing it, so every file, rank
   and number is the one a single-instance run writes.

Modules: :mod:`.cores` (which CPUs, how many instances), :mod:`.store`
(prediction inputs and results on disk, atomic: resumable),
:mod:`.worker` (what runs on a worker: one prediction), :mod:`.cluster`
(a local cluster of pinned workers, or an existing scheduler),
:mod:`.dispatch` (submitting, waiting, retrying).
"""
