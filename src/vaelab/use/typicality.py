"""The typicality test of Nalisnick, Matsukawa, Teh & Lakshminarayanan (2019), "Detecting
out-of-distribution inputs to deep generative models using typicality".

A model's samples do not lie where its density is highest but in its *typical set*, where
−log p(x) is close to the entropy H = E_p[−log p(x)]: in D dimensions the mode of N(0, I) has
−log p = (D/2) log 2π, H = (D/2) log 2πe, and a draw is almost never near the mode. So an
input with a *higher* likelihood than the training data is as suspicious as one with a lower
likelihood. The test statistic of a batch of M inputs is

    ε̂(x_1..M) = | −(1/M) Σ_m log p(x_m) − Ĥ |,    Ĥ = −(1/N) Σ_n log p(x_n^train),

the distance of the batch's mean log-likelihood from the training set's (the entropy
estimate). M = 1 scores each example alone. Oriented **higher = more anomalous**, in nats.
"""

from __future__ import annotations

import numpy as np

from vaelab import _checks


def typicality(nll: object, reference_nll: object, *, batch: int = 1) -> np.ndarray:
    """ε̂ per example, float64 [N] (module docstring).

    Args:
        nll: −log p̂(x) of the examples scored, [N].
        reference_nll: −log p̂(x) of the training (reference) examples, [N_ref ≥ 1]; their
            mean is Ĥ.
        batch: M, consecutive examples tested together; every example gets its batch's
            statistic (the last batch may be shorter).
    """
    nll = _checks.to_numpy(nll, np.float64).reshape(-1)
    ref = _checks.to_numpy(reference_nll, np.float64).reshape(-1)
    batch = _checks.positive_int("batch", batch)
    if ref.size == 0 or not np.isfinite(ref).all():
        raise ValueError(f"reference_nll: expected finite values for at least one reference "
                         f"example, got {ref.size} values")
    entropy = ref.mean()
    out = np.empty_like(nll)
    for start in range(0, nll.size, batch):
        part = slice(start, start + batch)
        out[part] = abs(nll[part].mean() - entropy)
    return out
