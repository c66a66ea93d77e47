"""scikit-learn estimators on vaelab's trainer: an imputer, an outlier detector, a transformer.

For people who hold tables and live in scikit-learn: each estimator trains a VAE with
:func:`vaelab.fit.train.train` (the same step, checks and data rule as ``vaelab train``) on the
rows given to ``fit``, reopens it with :func:`vaelab.load`, and answers through vaelab's own
uses, so it sits in a ``Pipeline``, a ``ColumnTransformer`` or a ``GridSearchCV`` beside
``IterativeImputer``, ``IsolationForest`` and ``PCA``:

* :class:`VAEImputer` — ``fit(X)`` with NaN as missing (MIWAE, Mattei & Frellsen 2019; with
  ``missing_model="self-masking"`` not-MIWAE, Ipsen, Mattei & Frellsen 2021); ``transform``
  fills the NaN with the importance-weighted conditional mean E[x_mis | x_obs] (observed
  entries are X's own, bit for bit); ``sample_posterior=True`` draws from p(x_mis | x_obs)
  instead, so fits with several ``random_state`` give multiple imputations as with
  ``IterativeImputer``, and :meth:`VAEImputer.multiple_imputations` gives M draws at once.
* :class:`VAEOutlierDetector` — ``score_samples`` is the importance-sampled log p̂(x) (higher =
  more normal, scikit-learn's convention), ``offset_`` the ``contamination`` quantile of the
  training scores, ``decision_function = score_samples − offset_`` and ``predict`` ±1.
* :class:`VAETransformer` — ``transform`` gives the latent means E_q[z | x],
  ``inverse_transform`` the decoder means E[x | z], ``score`` the mean log p̂(x) (a lower bound
  in expectation, Burda et al. 2016), so ``GridSearchCV`` selects models by held-out
  likelihood; ``sample`` draws new rows.

**Scores are row-local and reproducible.** A Monte Carlo estimate normally depends on which
noise a row gets, hence on the other rows in its batch. Here every row gets the same K draws
of the standard noise (common random numbers, seeded by ``random_state``): for a diagonal
Normal q, z_k = μ(x) + σ(x) ε_k, each row's estimate still unbiased for its own bound. A row's
score is then the same in any batch, order or subset, as scikit-learn's checks require.

**Pickling.** A fitted estimator pickles the scikit-learn way (``pickle``, ``joblib``, as
``GridSearchCV`` and ``clone`` need), but what it pickles is plain data: its parameters and
the run's own files as bytes (config.json, model.safetensors, metrics.jsonl); unpickling
rebuilds the network with :func:`vaelab.load` from those bytes, never a pickled torch object.
This squares with vaelab's rule that run directories hold no pickles and that vaelab never
unpickles a file handed to it: the run files stay JSON and safetensors (:meth:`save` writes
them as a run directory the CLI reads), and an estimator object is the user's own object,
pickled and unpickled by the user, with the trust they give their own files.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    OneToOneFeatureMixin,
    OutlierMixin,
    TransformerMixin,
)
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from torch.distributions import Distribution, Independent, Normal

from vaelab import _trust
from vaelab.fit.train import train
from vaelab.infer.schemes import scheme_for
from vaelab.use.encode import encode
from vaelab.use.impute import impute
from vaelab.use.trained import TrainedModel, load

#: The run files an estimator keeps (JSON and safetensors only: no checkpoint, no pickle).
RUN_FILES = ("config.json", "model.safetensors", "metrics.jsonl")
#: Most numbers in one [K, rows, D] tensor of a score (2^24 float64: 128 MiB): a score takes
#: as many rows at once as fit (a fixed 1024 rows at K = 1000 over 784 pixels took 19 GB).
SCORE_NUMBERS = 2**24


class _VAEEstimator(BaseEstimator):
    """What the three estimators share: the parameters, the training, the run in memory."""

    def __init__(self, *, latent_dim: int = 2, hidden: tuple[int, ...] = (64, 64),
                 likelihood: str = "gaussian", epochs: int = 100, batch_size: int = 64,
                 lr: float = 1e-3, num_samples: int = 100, random_state: Any = None,
                 options: dict | None = None, device: str = "cpu") -> None:
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.likelihood = likelihood
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.num_samples = num_samples
        self.random_state = random_state
        self.options = options
        self.device = device

    # ---- the run

    def _config(self, seed: int) -> dict:
        """The run's config: these parameters, then ``options`` (any other config key)."""
        config = {"latent_dim": self.latent_dim, "hidden": list(self.hidden),
                  "likelihood": self.likelihood, "epochs": self.epochs,
                  "batch_size": self.batch_size, "lr": self.lr, "seed": seed,
                  "val_fraction": 0.0, "binarize": "none", "device": self.device,
                  "compile": False}
        return {**config, **self._run_options(), **(self.options or {})}

    def _run_options(self) -> dict:
        return {}

    def _fit_run(self, X: np.ndarray) -> None:
        """Train on the rows X [N, D] in a temporary run directory; keep its files in memory."""
        self.seed_ = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        with tempfile.TemporaryDirectory(prefix="vaelab-sklearn-") as tmp, \
                _trust.trusting(self._trusted()):
            run = Path(tmp) / "run"
            try:
                train(self._config(self.seed_), run, dataset=X, log=None, progress=False)
            except ValueError as exc:      # the library's advice names flags: name parameters
                raise ValueError(self._parameter_words(str(exc))) from None
            self.run_files_ = {name: (run / name).read_bytes() for name in RUN_FILES
                               if (run / name).is_file()}
            self._loaded(load(run, device=self.device))

    def _parameter_words(self, text: str) -> str:
        """A training message in the words of this estimator: ``--likelihood gaussian`` →
        ``likelihood='gaussian'`` for its own parameters, ``--column-types`` →
        ``options={'column_types': ...}`` for a config key it passes through ``options``."""
        import re

        from vaelab import catalogue

        own = set(self.get_params())
        keys = {flag: option.key or option.name
                for kind in catalogue.CATALOGUE for flag, (option, _) in
                catalogue.flags(kind).items() if flag.startswith("--")}
        choosers = {"--" + field.replace("_", "-"): kind
                    for kind, field in catalogue.FIELDS.items()}

        def word(m: re.Match) -> str:
            flag, value = m.group(1), m.group(2)
            kind = choosers.get(flag)
            if value is not None and kind is not None and value in catalogue.names(kind):
                shown = repr(value)            # a component's name: the flag's value
            elif value is not None and re.fullmatch(r"-?\d[\d.e+-]*", value):
                shown = value
            else:
                shown, value = "...", None
            tail = "" if value is not None or m.group(2) is None else " " + m.group(2)
            name = keys.get(flag, flag[2:].replace("-", "_"))
            if name in own:
                return f"{name}={shown}{tail}"
            return f"options={{{name!r}: {shown}}}{tail}"

        return re.sub(r"(--[a-z][a-z0-9-]*)(?: ([\w.+-]+))?", word, text)

    def _trusted(self) -> list[str]:
        """The module of the network factory ``options`` names (``{"net": "factory",
        "net_options": {"factory": "pkg.mod:fn", ...}}``): naming it in the estimator's own
        parameters is the consent to import it, when fitting and when unpickling."""
        options = (self.options or {}).get("net_options")
        factory = options.get("factory") if isinstance(options, dict) else None
        return [factory.partition(":")[0]] if isinstance(factory, str) else []

    def _loaded(self, trained: TrainedModel) -> None:
        """Keep the loaded run and a float64 copy of its model with its q(z | x): scores and
        codes are computed in double precision, so a row's value does not move with the
        batch's size (float32 products are summed in an order that depends on it)."""
        model = copy.deepcopy(trained.model).double().eval()
        scheme = scheme_for(trained.config.train, model)
        self._trained, self._double = trained, (model, lambda x: scheme(x, None))

    def _model(self) -> TrainedModel:
        """The trained model."""
        check_is_fitted(self, "run_files_")
        return self._trained

    def save(self, run_dir: str | Path) -> Path:
        """Write the fitted run as a run directory (config.json, model.safetensors,
        metrics.jsonl) that ``vaelab.load`` and the CLI read; → its path."""
        check_is_fitted(self, "run_files_")
        folder = Path(run_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        for name, blob in self.run_files_.items():
            (folder / name).write_bytes(blob)
        return folder

    def _float64(self) -> tuple[Any, Callable[..., Distribution]]:
        """(the float64 model, its q(z | x)) of :meth:`_loaded`."""
        check_is_fitted(self, "run_files_")
        return self._double

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())      # a copy: the estimator keeps its model
        for name in ("_trained", "_double"):     # rebuilt from run_files_ (bytes), never pickled
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "run_files_" in state:          # a fitted estimator: rebuild with vaelab.load
            with tempfile.TemporaryDirectory(prefix="vaelab-sklearn-") as tmp:
                for name, blob in self.run_files_.items():
                    (Path(tmp) / name).write_bytes(blob)
                self._loaded(load(tmp, device=self.device, trust=self._trusted()))

    # ---- data and scores

    def _check_X(self, X: Any, *, reset: bool, allow_nan: bool = False) -> np.ndarray:
        return validate_data(self, X, reset=reset, dtype=np.float64, ensure_min_samples=2 if
                             reset else 1, ensure_all_finite="allow-nan" if allow_nan else True)

    def _rows(self, X: np.ndarray) -> torch.Tensor:
        """X [N, D] as float64 rows the model accepts, on its device."""
        model, _ = self._float64()
        x = torch.as_tensor(np.array(X, dtype=np.float64), device=self.device)
        return model.check_data(x, "X")

    def _log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """Row-local log p̂(x) [N] from K common noise draws (module docstring)."""
        model, infer = self._float64()
        k = int(self.num_samples)
        out = []
        rows = self._rows(X)
        for part in rows.split(max(1, SCORE_NUMBERS // (k * max(1, rows[0].numel())))):
            with torch.no_grad():
                lw = _common_noise_log_weights(model, infer, part, k, self.seed_)   # [k, B]
            out.append((lw.logsumexp(0) - math.log(k)).cpu())
        return torch.cat(out).numpy()


def _common_noise_log_weights(model: Any, infer: Callable[..., Distribution], x: torch.Tensor,
                              k: int, seed: int) -> torch.Tensor:
    """log p(x, z_k) − log q(z_k | x) [k, B] with the same k noise draws for every row.

    A diagonal Normal q takes z_k = loc + scale · ε_k with ε_k [k, 1, L] from ``seed``; any
    other q draws each row alone from the same seed (slower, the same property).
    """
    q = infer(x)
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal):
        generator = torch.Generator(device=x.device).manual_seed(seed)
        eps = torch.randn((k, 1, q.event_shape[-1]), generator=generator, device=x.device,
                          dtype=q.mean.dtype)
        z = q.base_dist.loc + q.base_dist.scale * eps
        return model.log_joint(x, z) - q.log_prob(z)
    columns = []
    for i in range(x.shape[0]):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            row = x[i:i + 1]
            qi = infer(row)
            z = qi.sample((k,))
            columns.append(model.log_joint(row, z) - qi.log_prob(z))
    return torch.cat(columns, dim=1)


# --------------------------------------------------------------------------- imputer


class VAEImputer(OneToOneFeatureMixin, TransformerMixin, _VAEEstimator):
    """Fill in missing values (NaN) with a VAE trained on the incomplete rows (MIWAE).

    Parameters:
        latent_dim, hidden, likelihood, epochs, batch_size, lr: the model and its training
            (``vaelab train``'s options of the same names); likelihood ``"gaussian"`` for real
            columns (standardized per column on their observed entries, undone on output).
        num_samples: K importance draws per row when imputing.
        train_samples: K of the MIWAE bound while training (objective ``"iwae"``).
        missing_model: ``"none"`` (MIWAE: missing at random) or ``"self-masking"`` (not-MIWAE:
            a value's own size makes it likelier to be missing).
        sample_posterior: ``transform`` returns one draw of x_mis ~ p(x_mis | x_obs) instead
            of the conditional mean (multiple imputation: several fits with other
            ``random_state``, or :meth:`multiple_imputations`).
        random_state: seeds training and imputation (None: fresh each fit).
        options: any other ``vaelab`` config key (e.g. ``{"prior": "vamp"}``); your own
            networks with ``{"net": "factory", "net_options": {"factory": "pkg.mod:make_nets",
            "args": {...}}}`` (``vaelab.fit``'s protocol; naming the factory here is consent
            to import it, also when the estimator is unpickled).
        device: where the network runs.

    Attributes:
        n_features_in_, feature_names_in_: as every scikit-learn estimator.
        run_files_: the run's config.json, model.safetensors and metrics.jsonl (bytes).
    """

    def __init__(self, *, latent_dim: int = 2, hidden: tuple[int, ...] = (64, 64),
                 likelihood: str = "gaussian", epochs: int = 100, batch_size: int = 64,
                 lr: float = 1e-3, num_samples: int = 100, train_samples: int = 5,
                 missing_model: str = "none", sample_posterior: bool = False,
                 random_state: Any = None, options: dict | None = None,
                 device: str = "cpu") -> None:
        super().__init__(latent_dim=latent_dim, hidden=hidden, likelihood=likelihood,
                         epochs=epochs, batch_size=batch_size, lr=lr, num_samples=num_samples,
                         random_state=random_state, options=options, device=device)
        self.train_samples = train_samples
        self.missing_model = missing_model
        self.sample_posterior = sample_posterior

    def _run_options(self) -> dict:
        return {"missing": "mask", "missing_model": self.missing_model, "objective": "iwae",
                "num_samples": self.train_samples, "drop_empty_rows": True}

    def fit(self, X: Any, y: Any = None) -> VAEImputer:
        """Train on the rows of X [N, D] (NaN = missing; rows with nothing observed are
        left out of training)."""
        self._fit_run(self._check_X(X, reset=True, allow_nan=True))
        return self

    def _impute(self, X: Any, draws: int | None) -> np.ndarray:
        X = np.array(self._check_X(X, reset=False, allow_nan=True))    # ours: writable
        filled = impute(self._model(), X, num_samples=int(self.num_samples), draws=draws,
                        seed=self.seed_)
        return np.asarray(filled)

    def transform(self, X: Any) -> np.ndarray:
        """X [N, D] with its NaN filled in (observed entries unchanged, bit for bit)."""
        filled = self._impute(X, 1 if self.sample_posterior else None)
        return filled[0] if self.sample_posterior else filled

    def multiple_imputations(self, X: Any, n_imputations: int = 5) -> np.ndarray:
        """M = ``n_imputations`` draws from p(x_mis | x_obs) by importance resampling,
        [M, N, D] (observed entries unchanged)."""
        if not isinstance(n_imputations, int) or n_imputations < 1:
            raise ValueError(f"n_imputations: expected a positive int, got {n_imputations!r}")
        return self._impute(X, n_imputations)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


# --------------------------------------------------------------------------- outlier detector


class VAEOutlierDetector(OutlierMixin, _VAEEstimator):
    """Outlier detection by a VAE's log-likelihood: rows the model finds unlikely are outliers.

    Parameters:
        latent_dim, hidden, likelihood, epochs, batch_size, lr, random_state, options, device:
            as :class:`VAEImputer`.
        num_samples: K importance draws of log p̂(x) per row.
        contamination: the expected fraction of outliers in the training rows, in (0, 0.5]:
            the threshold ``offset_`` is that quantile of the training scores.

    Attributes:
        offset_: the threshold on ``score_samples`` (``decision_function`` = score − offset_).
        n_features_in_, feature_names_in_, run_files_: as :class:`VAEImputer`.
    """

    def __init__(self, *, latent_dim: int = 2, hidden: tuple[int, ...] = (64, 64),
                 likelihood: str = "gaussian", epochs: int = 100, batch_size: int = 64,
                 lr: float = 1e-3, num_samples: int = 100, contamination: float = 0.1,
                 random_state: Any = None, options: dict | None = None,
                 device: str = "cpu") -> None:
        super().__init__(latent_dim=latent_dim, hidden=hidden, likelihood=likelihood,
                         epochs=epochs, batch_size=batch_size, lr=lr, num_samples=num_samples,
                         random_state=random_state, options=options, device=device)
        self.contamination = contamination

    def fit(self, X: Any, y: Any = None) -> VAEOutlierDetector:
        """Train on the rows of X [N, D]; set ``offset_`` from their scores."""
        if not (isinstance(self.contamination, (int, float)) and 0 < self.contamination <= 0.5):
            raise ValueError(f"contamination: expected a fraction in (0, 0.5], got "
                             f"{self.contamination!r}")
        X = self._check_X(X, reset=True)
        self._fit_run(X)
        self.offset_ = float(np.percentile(self._log_likelihood(X), 100 * self.contamination))
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """log p̂(x) per row, [N] (higher = more normal)."""
        check_is_fitted(self, "run_files_")
        return self._log_likelihood(self._check_X(X, reset=False))

    def decision_function(self, X: Any) -> np.ndarray:
        """score_samples − offset_, [N]: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for inliers, −1 for outliers, [N]."""
        return np.where(self.decision_function(X) < 0, -1, 1)


# --------------------------------------------------------------------------- transformer


class VAETransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, _VAEEstimator):
    """A VAE as a transformer: rows → latent means, and back; scored by log-likelihood.

    Parameters: as :class:`VAEOutlierDetector` without ``contamination``.

    Attributes:
        n_features_in_, feature_names_in_, run_files_: as :class:`VAEImputer`.
    """

    def fit(self, X: Any, y: Any = None) -> VAETransformer:
        """Train on the rows of X [N, D]."""
        self._fit_run(self._check_X(X, reset=True))
        self._n_features_out = int(self.latent_dim)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """E_q[z | x] per row, [N, latent_dim]."""
        _, infer = self._float64()
        x = self._rows(self._check_X(X, reset=False))
        codes = encode(infer, x, generator=torch.Generator().manual_seed(self.seed_))
        return codes.double().cpu().numpy()

    def inverse_transform(self, X: Any) -> np.ndarray:
        """E[x | z] per row of codes X [N, latent_dim], [N, D] on the data's scale."""
        model, _ = self._float64()
        z = np.asarray(X, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self._n_features_out:
            raise ValueError(f"X: expected codes of shape (n_samples, {self._n_features_out}), "
                             f"got shape {z.shape}")
        with torch.no_grad():
            mean = model.decode(torch.as_tensor(z, device=self.device)).mean
        return mean.double().cpu().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log p̂(x) over the rows of X (nats per row; higher is better)."""
        check_is_fitted(self, "run_files_")
        return float(self._log_likelihood(self._check_X(X, reset=False)).mean())

    def score_samples(self, X: Any) -> np.ndarray:
        """log p̂(x) per row, [N]."""
        check_is_fitted(self, "run_files_")
        return self._log_likelihood(self._check_X(X, reset=False))

    def sample(self, n_samples: int = 1, random_state: Any = None) -> np.ndarray:
        """n draws x ~ p(x), [n_samples, D] on the data's scale."""
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples: expected a positive int, got {n_samples!r}")
        seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
        with torch.no_grad():
            x = self._model().sample(n_samples, generator=torch.Generator().manual_seed(seed))
        return x.double().cpu().numpy()
