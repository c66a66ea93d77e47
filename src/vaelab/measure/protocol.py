"""The test protocol of a trained run: what ``vaelab evaluate`` computes and eval.json holds.

Role in vaelab: one call evaluates a run's model on held-out data with a log p(x) estimator
(importance sampling, AIS or BDMC; ``vaelab.measure.estimators``) and gathers, beside the
numbers of :func:`vaelab.measure.evaluate.evaluate_model`, what a reader needs to trust them:
the data and split, the seed, the time taken, what objective trained the run (the ELBO
reported is always the true one, β = 1 and no free bits), how far its training got (an
unfinished run, or one stopped inside its KL warm-up, is said) and what the estimator adds (for
BDMC, the sandwich of Grosse et al. 2015 on simulated data, with a warning when it is wide).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vaelab._runtime import isolated_rng
from vaelab.measure.evaluate import evaluate_model


def evaluate_run(trained: Any, dataset: Any, estimator: Any, *, run: str, split: str,
                 seed: int, batch_size: int, limit: int | None,
                 infer: Callable | None = None, progress: bool = False) -> dict:
    """eval.json's content for the loaded run ``trained`` on ``dataset`` (rows x [N, D]).

    The estimator's draws are seeded by ``seed`` in an isolated RNG, so an evaluation leaves
    the caller's random state alone; ``limit`` evaluates the first rows only (None: all);
    ``infer`` is q(z | x) as the run was trained (None: its encoder).
    """
    start = time.perf_counter()
    with isolated_rng(seed):
        result = evaluate_model(trained.model, dataset.x.to(trained.device),
                                num_samples=estimator.draws, seed=seed,
                                estimator=None if estimator.is_plain else estimator,
                                batch_size=batch_size, limit=limit, data_kind=dataset.kind,
                                infer=infer, per_example=True, progress=progress,
                                training=trained.config.train)
    result = {"run": run, "data": dataset.name, "split": split,
              "binarized": trained.config.train.binarize != "none", "seed": seed,
              "seconds": round(time.perf_counter() - start, 2),
              "trained_with": trained_with(trained.config.train),
              "training": trained.training_progress(),
              "estimator": estimator.describe(), **result,
              **estimator.extra(trained.model, min(limit or 100, 100), seed=seed,
                                batch_size=batch_size)}
    if "bdmc" in result:
        line = sandwich_warning(result["bdmc"], estimator)
        if line is not None:
            result["warnings"] = [*result.get("warnings", []), line]
    return result


def trained_with(tc) -> dict:
    """What objective trained a run (eval.json's ``trained_with``); the ELBO and log p̂(x)
    reported beside it are always the true ones (β = 1, no free bits)."""
    return {"objective": tc.objective, "num_samples": tc.num_samples, "beta": tc.beta,
            "kl_schedule": tc.kl_schedule, "kl_warmup_epochs": tc.kl_warmup_epochs,
            "kl_cycles": tc.kl_cycles, "kl_ratio": tc.kl_ratio, "free_bits": tc.free_bits}


#: A BDMC gap above this many nats (mean over the simulated examples) is warned about.
SANDWICH_WARN = 0.5


def sandwich_warning(b: dict, estimator) -> str | None:
    """One line when the BDMC sandwich is wide: the AIS schedule is far from exact."""
    gap = b.get("gap", {}).get("mean")
    if gap is None or gap <= SANDWICH_WARN:
        return None
    return (f"warning: the BDMC gap is {gap:.2f} nats (max {b['gap']['max']:.2f}): with "
            f"--ais-steps {estimator.steps} AIS is that far from exact on data of this model, "
            f"so its log p(x) may be as loose; raise --ais-steps until the gap is small "
            f"(< 0.1 nat)")
