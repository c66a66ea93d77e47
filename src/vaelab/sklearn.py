"""``vaelab.sklearn``: the scikit-learn estimators (re-exports of :mod:`vaelab.use.sklearn`).

A module of its own, imported only when asked for, so ``import vaelab`` and ``vaelab --help``
stay free of torch and scikit-learn.
"""

from vaelab.use.sklearn import VAEImputer, VAEOutlierDetector, VAETransformer

__all__ = ["VAEImputer", "VAEOutlierDetector", "VAETransformer"]
