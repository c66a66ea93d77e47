"""vaelab's scikit-learn estimators: scikit-learn's own checks, and what each one promises.

Oracles: scikit-learn's estimator checks; the imputer against mean imputation on strongly
correlated columns and the observed entries bit for bit; the detector's training outlier
count against its contamination exactly and far points against near ones; the transformer's
score against vaelab's own importance-sampled log p̂(x) of the same saved run, its
inverse_transform against the run's reconstruction, GridSearchCV's scores against the folds
refitted by hand; a pickle that references no class but the estimator's own.
"""

from __future__ import annotations

import pickle
import pickletools

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import vaelab
from vaelab.sklearn import VAEImputer, VAEOutlierDetector, VAETransformer

#: Tiny networks and one epoch: scikit-learn's checks fit dozens of times.
TINY = dict(latent_dim=2, hidden=(8,), epochs=1, batch_size=32, num_samples=4)


@parametrize_with_checks([VAEImputer(**TINY), VAEOutlierDetector(**TINY),
                          VAETransformer(**TINY)])
def test_scikit_learn_checks(estimator, check):
    check(estimator)


def _correlated(n: int, seed: int = 0) -> np.ndarray:
    """Three columns driven by one factor: each is nearly a function of the others."""
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, 1))
    return np.hstack([t, 2 * t + 1, -t]) + 0.05 * rng.normal(size=(n, 3))


def test_the_imputer_beats_the_column_mean_and_keeps_what_was_seen():
    full = _correlated(200)
    rng = np.random.default_rng(1)
    holes = np.zeros(full.shape, bool)
    holes[np.arange(200), rng.integers(0, 3, 200)] = rng.random(200) < 0.5   # ≤ 1 per row
    x = np.where(holes, np.nan, full)
    imputer = VAEImputer(latent_dim=1, hidden=(32,), epochs=15, batch_size=50, lr=1e-2,
                         train_samples=3, num_samples=50, random_state=0).fit(x)
    filled = imputer.transform(x)
    assert np.array_equal(filled[~holes], x[~holes])          # bit for bit
    rmse = np.sqrt(np.mean((filled[holes] - full[holes]) ** 2))
    mean_rmse = np.sqrt(np.mean((SimpleImputer().fit_transform(x)[holes] - full[holes]) ** 2))
    assert rmse < 0.5 * mean_rmse, (rmse, mean_rmse)
    draws = imputer.multiple_imputations(x, 3)
    assert draws.shape == (3, *x.shape)
    assert all(np.array_equal(d[~holes], x[~holes]) for d in draws)
    assert not np.array_equal(draws[0][holes], draws[1][holes])          # real draws
    posterior = imputer.set_params(sample_posterior=True).transform(x)   # no refit needed
    assert np.array_equal(posterior[~holes], x[~holes])
    assert not np.allclose(posterior[holes], filled[holes])


def test_the_detector_flags_its_contamination_and_far_points():
    x = np.random.default_rng(0).normal(size=(100, 2))
    detector = VAEOutlierDetector(hidden=(16,), epochs=20, batch_size=20, lr=1e-2,
                                  num_samples=16, contamination=0.1, random_state=0).fit(x)
    assert (detector.predict(x) == -1).sum() == 10           # 10% of 100 distinct scores
    far = np.array([[8.0, -8.0], [9.0, 9.0]])
    assert detector.score_samples(far).max() < detector.score_samples(x).min()
    assert detector.predict(far).tolist() == [-1, -1]
    np.testing.assert_array_equal(detector.decision_function(x),
                                  detector.score_samples(x) - detector.offset_)


def test_scores_take_as_many_rows_at_once_as_fit_in_memory(monkeypatch):
    """Each [K, rows, D] pass holds at most SCORE_NUMBERS numbers (K = 1000 over 784 pixels
    in a fixed 1024 rows took 19 GB); the rows' scores are those of a single pass."""
    from vaelab.use import sklearn as estimators

    x = _correlated(50)
    model = VAETransformer(**TINY, random_state=0).fit(x)
    whole = model.score_samples(x)                 # K·50·3 numbers: one pass
    passes = []
    inner = estimators._common_noise_log_weights

    def spy(net, infer, part, k, seed):
        passes.append(part.shape[0])
        return inner(net, infer, part, k, seed)

    monkeypatch.setattr(estimators, "_common_noise_log_weights", spy)
    monkeypatch.setattr(estimators, "SCORE_NUMBERS", 7 * TINY["num_samples"] * 3)
    chunked = model.score_samples(x)
    assert passes == [7] * 7 + [1]
    np.testing.assert_allclose(chunked, whole, rtol=1e-12)


def test_the_transformer_scores_the_log_likelihood_of_its_run(tmp_path):
    x = _correlated(120)
    model = VAETransformer(latent_dim=1, hidden=(16,), epochs=10, lr=1e-2, num_samples=500,
                           random_state=0).fit(x)
    trained = vaelab.load(model.save(tmp_path / "run"))
    torch.manual_seed(0)
    estimate = trained.log_likelihood(torch.as_tensor(x, dtype=torch.float32), 500)
    reference = estimate.log_likelihood.double().numpy()
    scores = model.score_samples(x)
    # two independent importance-sampling estimates of the same log p(x): within their
    # Monte Carlo error (5 standard errors of each row's estimate, and of the mean)
    se = estimate.stderr.double().numpy()
    assert np.all(np.abs(scores - reference) < 5 * se + 1e-3)
    assert model.score(x) == pytest.approx(scores.mean())
    codes = model.transform(x)
    assert codes.shape == (120, 1)
    reconstruction = trained.reconstruct(torch.as_tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(model.inverse_transform(codes), reconstruction.numpy(),
                               rtol=1e-4, atol=1e-4)
    assert model.sample(5, random_state=1).shape == (5, 3)
    np.testing.assert_array_equal(model.sample(5, random_state=1), model.sample(5, random_state=1))


def _globals(blob: bytes) -> set[str]:
    """The classes and functions a pickle names (what unpickling would import)."""
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(blob):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            names.add(".".join(strings[-2:]))
        elif op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
    return names


def test_a_pickle_holds_the_run_files_not_torch_objects():
    x = _correlated(40)
    model = VAETransformer(**TINY, random_state=0).fit(x)
    blob = pickle.dumps(model)
    assert _globals(blob) == {"vaelab.use.sklearn.VAETransformer"}
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.transform(x), model.transform(x))
    assert set(again.run_files_) == {"config.json", "model.safetensors", "metrics.jsonl"}
    fresh = clone(model)
    assert fresh.get_params() == model.get_params() and not hasattr(fresh, "run_files_")


def test_in_a_pipeline_with_a_column_transformer_and_a_grid_search():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    values = _correlated(80)
    label = (values[:, 0] > 0).astype(int)
    values[rng.random(values.shape) < 0.1] = np.nan
    frame = pd.DataFrame(values, columns=["a", "b", "c"])
    frame["city"] = rng.choice(["Oslo", "Lyon"], 80)
    prepare = ColumnTransformer([
        ("numbers", Pipeline([("impute", VAEImputer(**TINY, random_state=0)),
                              ("scale", StandardScaler())]), ["a", "b", "c"]),
        ("city", OneHotEncoder(), ["city"])])
    search = GridSearchCV(Pipeline([("prepare", prepare), ("classify", LogisticRegression())]),
                          {"prepare__numbers__impute__latent_dim": [1, 2]}, cv=2)
    search.fit(frame, label)
    assert search.predict(frame).shape == (80,)
    assert search.best_params_["prepare__numbers__impute__latent_dim"] in (1, 2)


def test_grid_search_selects_by_the_transformers_own_score():
    x = _correlated(60)
    grid = {"latent_dim": [1, 2]}
    search = GridSearchCV(VAETransformer(**{**TINY, "latent_dim": 1}, random_state=0), grid,
                          cv=KFold(2)).fit(x)
    by_hand = []
    for latent_dim in grid["latent_dim"]:
        folds = [clone(search.estimator).set_params(latent_dim=latent_dim)
                 .fit(x[train]).score(x[test]) for train, test in KFold(2).split(x)]
        by_hand.append(np.mean(folds))
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], by_hand)
    assert search.best_params_["latent_dim"] == grid["latent_dim"][int(np.argmax(by_hand))]


def test_feature_names_travel():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(_correlated(40), columns=["a", "b", "c"])
    imputer = VAEImputer(**TINY, random_state=0).set_output(transform="pandas").fit(frame)
    assert list(imputer.transform(frame).columns) == ["a", "b", "c"]
    model = VAETransformer(**TINY, random_state=0).fit(frame)
    assert list(model.feature_names_in_) == ["a", "b", "c"]
    assert list(model.get_feature_names_out()) == ["vaetransformer0", "vaetransformer1"]


def make_nets(*, data_dim, latent_dim, image_shape, encoder_out, decoder_out, width=8):
    """A user's factory of networks (vaelab.fit's protocol)."""
    from torch import nn

    return (nn.Sequential(nn.Linear(data_dim, width), nn.Tanh(), nn.Linear(width, encoder_out)),
            nn.Sequential(nn.Linear(latent_dim, width), nn.Tanh(),
                          nn.Linear(width, decoder_out)))


def test_a_transformer_on_the_users_own_networks():
    x = _correlated(40)
    factory = {"net": "factory",
               "net_options": {"factory": f"{__name__}:make_nets", "args": {"width": 6}}}
    model = VAETransformer(**TINY, options=factory, random_state=0).fit(x)
    widths = {m.out_features for m in model._model().model.modules()
              if isinstance(m, torch.nn.Linear)}
    assert 6 in widths                                  # the user's nets, width 6
    again = pickle.loads(pickle.dumps(model))           # rebuilt by importing the factory
    np.testing.assert_array_equal(again.transform(x), model.transform(x))


def test_a_training_error_names_the_estimators_parameters_not_flags():
    """Real-valued data under likelihood="bernoulli": the advice names the parameter, as the
    user would type it in Python, and no command-line flag."""
    from vaelab.sklearn import VAETransformer

    X = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError) as err:
        VAETransformer(likelihood="bernoulli", epochs=1).fit(X)
    message = str(err.value)
    assert "likelihood='gaussian'" in message and "--" not in message, message


def test_parameter_words_of_options_and_unknown_values():
    from vaelab.sklearn import VAEImputer

    words = VAEImputer()._parameter_words
    assert words("pass --latent-dim 8 here") == "pass latent_dim=8 here"
    assert words("set --column-types") == "set options={'column_types': ...}"
    assert words("needs --free-bits 0.5") == "needs options={'free_bits': 0.5}"
