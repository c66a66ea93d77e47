"""``vaelab tune``: find the best model for your data within a budget, resumable and parallel.

Role in vaelab: a search over the catalogue's components and their options
(:mod:`vaelab.tune.space`) driven by Optuna (TPE sampling, pruning from the per-epoch
validation ELBO, its database as the study's storage), where every trial is a normal run
directory (:mod:`vaelab.tune.study`), the best trials are re-ranked by validation
log-likelihood (:mod:`vaelab.tune.rank`) and the result is a recipe and a summary
(:mod:`vaelab.tune.summary`). The entry point is :func:`vaelab.tune.search.tune`.
"""
