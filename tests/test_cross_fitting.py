"""Honest cross-fitting: every out-of-fold (OOF) estimate comes from models that never saw its
row, the blend is fitted on OOF estimates only, and the deployed models are refitted on every
labelled row. A small real run on the bundled sample, with spies on every fit call."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pytest
import torch

from client.blend import COMPONENTS
from client.priors import PricePriors
from tests.conftest import SAMPLE
from training import gbm as gbm_module
from training import pipeline
from training.config import TrainConfig
from training.finetune import FineTuneSettings, load_regressor
from training.folds import Folds, cross_fit, cross_fit_every_row
from training.fusion import FusionSettings, load_fusion
from training.gbm import GbmSettings, load_gbm
from training.lexical import load_lexical
from training.report import validation_table
from training.run_dir import RunDir

ROWS = 160
# (function in training.pipeline, position of its training-rows argument)
TRAINERS = {"fine_tune": 4, "train_fusion": 2, "fit_lexical": 3, "fit_price_priors": 2, "train_gbm": 2}


class Spy:
    """Records every trainer call with its training rows and the cross-fitting fold it ran in."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.fits: list[dict] = []  # {"trainer", "rows", "fold": (train_rows, held_out) or None, "args", "result"}
        self.folds: list[tuple[np.ndarray, np.ndarray]] = []  # every fit_predict call of cross_fit
        self.lgb_cv_folds: list[tuple[np.ndarray, np.ndarray]] = []
        self.blend_fits: list[tuple] = []
        self._current: tuple[np.ndarray, np.ndarray] | None = None
        for name, position in TRAINERS.items():
            monkeypatch.setattr(pipeline, name, self._trainer(name, getattr(pipeline, name), position))
        monkeypatch.setattr(pipeline, "cross_fit", self._cross_fit)
        monkeypatch.setattr(pipeline, "cross_fit_every_row", self._cross_fit_every_row)
        monkeypatch.setattr(pipeline, "fit_blend_weights", self._blend(pipeline.fit_blend_weights))
        monkeypatch.setattr(gbm_module.lgb, "cv", self._lgb_cv(lgb.cv))

    def _trainer(self, name, real, position):
        def wrapper(*args, **kwargs):
            result = real(*args, **kwargs)
            self.fits.append({"trainer": name, "rows": set(np.asarray(args[position]).tolist()),
                              "fold": self._current, "args": args, "result": result})
            return result
        return wrapper

    def _watch(self, fit_predict, held_out_of):
        def watched(train_rows, rows):
            held_out = held_out_of(train_rows, rows)
            self.folds.append((train_rows, held_out))
            self._current = (train_rows, held_out)
            try:
                return fit_predict(train_rows, rows)
            finally:
                self._current = None
        return watched

    def _cross_fit(self, folds, fit_predict, n_rows):
        return cross_fit(folds, self._watch(fit_predict, lambda _, held_out: held_out), n_rows)

    def _cross_fit_every_row(self, folds, fit_predict, n_rows):
        return cross_fit_every_row(folds, self._watch(fit_predict, lambda train_rows, rows: np.setdiff1d(
            rows, train_rows)), n_rows)

    def _blend(self, real):
        def wrapper(*args, **kwargs):
            self.blend_fits.append(args)
            return real(*args, **kwargs)
        return wrapper

    def _lgb_cv(self, real):
        def wrapper(params, dataset, **kwargs):
            self.lgb_cv_folds = list(kwargs["folds"])
            return real(params, dataset, **kwargs)
        return wrapper


@pytest.fixture(scope="module")
def spied_run(tmp_path_factory):
    """A small run (3 folds, 20% validation rows)."""
    monkeypatch = pytest.MonkeyPatch()
    spy = Spy(monkeypatch)
    output = tmp_path_factory.mktemp("spied")
    config = TrainConfig(
        csv=SAMPLE / "train.csv", output=output, images_dir=SAMPLE / "images", ocr_engine="none",
        limit_rows=ROWS, folds=3, val_fraction=0.2, fine_tuning=FineTuneSettings(epochs=1),
        fusion=FusionSettings(max_epochs=2), gbm=GbmSettings(max_rounds=30, early_stopping_rounds=10),
    )
    try:
        pipeline.train(config)
    finally:
        monkeypatch.undo()
    table = pipeline.read_training_table(config)
    written = json.loads((output / "folds.json").read_text())
    row_of = {sample_id: row for row, sample_id in enumerate(table.sample_ids)}
    labelled = np.asarray(sorted(row_of[s] for s in written["fold"]))
    validation = {row_of[s] for s in written["validation"]}
    return output, spy, table, labelled, validation


def test_no_oof_estimate_comes_from_a_model_that_saw_its_row(spied_run):
    _, spy, _, labelled, validation = spied_run
    assert spy.folds, "nothing was cross-fitted"
    for train_rows, held_out in spy.folds:
        assert not set(train_rows.tolist()) & set(held_out.tolist())
    in_folds = [fit for fit in spy.fits if fit["fold"] is not None]
    assert {fit["trainer"] for fit in in_folds} == {"fine_tune", "train_fusion", "fit_lexical", "fit_price_priors"}
    for fit in in_folds:
        train_rows, held_out = fit["fold"]
        assert fit["rows"] <= set(train_rows.tolist()), fit["trainer"]
        assert not fit["rows"] & set(held_out.tolist()), f"{fit['trainer']} saw the rows it estimated"
    for fit in spy.fits:
        assert not fit["rows"] & validation, f"{fit['trainer']} trained on validation rows"
    # the stacker's OOF estimates: LightGBM's own cross-validation over the same folds
    assert len(spy.lgb_cv_folds) == 3
    held = np.concatenate([test for _, test in spy.lgb_cv_folds])
    assert sorted(held.tolist()) == list(range(len(labelled)))
    for train_positions, test_positions in spy.lgb_cv_folds:
        assert not set(train_positions.tolist()) & set(test_positions.tolist())


def test_every_labelled_row_gets_exactly_one_oof_estimate_per_cross_fitted_stage(spied_run):
    _, spy, _, labelled, _ = spied_run
    held_out = [set(h.tolist()) for _, h in spy.folds]
    # the text encoder, the MLP, the lexical model and the price priors, each on the 3 folds
    assert [len(spy.folds), sum(map(len, held_out))] == [3 + 3 + 3 + 3, 4 * len(labelled)]
    for stage in (held_out[:3], held_out[3:6], held_out[6:9], held_out[9:]):
        assert set().union(*stage) == set(labelled.tolist())
        assert sum(map(len, stage)) == len(labelled)


def test_the_mlp_learns_from_the_embeddings_of_the_encoder_it_is_served_with(spied_run):
    """In fold f the MLP learns from, and estimates fold f with, the encoder fine-tuned without
    fold f; the deployed MLP learns from the refitted encoder that serves it: in both, embeddings
    of rows the encoder was fine-tuned on, as the deployment's are of its training rows."""
    output, spy, _, labelled, _ = spied_run
    text_stage = np.load(output / "text_stage.npz")
    per_fold, served = text_stage["per_fold"], text_stage["served"]
    folds = Folds(labelled, np.asarray(list(json.loads((output / "folds.json").read_text())["fold"].values())))
    mlp_fits = [fit for fit in spy.fits if fit["trainer"] == "train_fusion"]
    assert len(mlp_fits) == 4
    for fit in mlp_fits:
        inputs, train_rows = fit["args"][0], np.asarray(sorted(fit["rows"]))
        if fit["fold"] is None:
            expected = served[:, 1:]
        else:
            fold = folds.fold_of(fit["fold"][1])
            expected = per_fold[fold, :, 1:]
            # another fold's encoder is another embedding space: this check could tell them apart
            assert not np.allclose(per_fold[(fold + 1) % 3, train_rows, 1:], expected[train_rows], atol=1e-4)
        np.testing.assert_allclose(inputs.text_embedding[train_rows], expected[train_rows], rtol=0, atol=1e-6)
    # every labelled row's OOF text estimates come from the encoder fine-tuned without its fold
    assert np.isnan(per_fold[:, np.setdiff1d(np.arange(per_fold.shape[1]), labelled)]).all()
    assert np.isfinite(per_fold[:, labelled]).all()


def test_blend_is_fitted_on_oof_estimates_of_every_labelled_row(spied_run):
    output, spy, table, labelled, _ = spied_run
    component_log_prices, prices = spy.blend_fits[0]
    assert component_log_prices.shape == (len(labelled), len(COMPONENTS))
    assert np.isfinite(component_log_prices).all()
    np.testing.assert_array_equal(prices, table.prices[labelled])
    blend = json.loads((output / "blend.json").read_text())
    for key in ("fitted_weights", "seed_weights"):
        weights = np.asarray(blend[key])
        assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0)


def test_deployed_models_are_the_refits_on_every_labelled_row(spied_run):
    output, spy, _, labelled, _ = spied_run
    run = RunDir(output)
    refits = {fit["trainer"]: fit for fit in spy.fits if fit["fold"] is None}
    assert set(refits) == set(TRAINERS)
    for name, fit in refits.items():
        assert fit["rows"] == set(labelled.tolist()), name

    saved_models = (load_regressor(run.text_encoder)[0], load_fusion(run.fusion_weights, run.fusion_architecture))
    for saved, trainer in zip(saved_models, ("fine_tune", "train_fusion")):
        trained, _ = refits[trainer]["result"]
        saved_state = saved.state_dict()
        for key, value in trained.state_dict().items():
            torch.testing.assert_close(saved_state[key], value, msg=f"{trainer}: {key}")
    lexical, _ = refits["fit_lexical"]["result"]
    torch.testing.assert_close(load_lexical(run.lexical_weights, run.lexical_settings).weighted_coef,
                               lexical.weighted_coef)
    assert load_gbm(run.lightgbm).model_to_string() == refits["train_gbm"]["result"].model_to_string()
    assert PricePriors.load(run.price_priors).tables == refits["fit_price_priors"]["result"].tables
    assert len(np.load(output / "retrieval_log_prices.npy")) == len(labelled)


def test_report_gives_oof_smape_with_the_folds_spread(spied_run):
    output, _, _, labelled, validation = spied_run
    report = json.loads((output / "report.json").read_text())
    assert report["rows"]["labelled"] == len(labelled) and report["rows"]["validation"] == len(validation)
    assert set(report["oof_smape"]) == {*COMPONENTS, "blend_seed", "blend_fitted"}
    for score in (*report["oof_smape"].values(), report["blend_cross_fitted_smape"]):
        assert len(score["folds"]) == 3
        assert 0 < score["all"] < 200
        assert score["spread"] == pytest.approx(max(score["folds"]) - min(score["folds"]))
    assert set(report["validation_smape"]) == set(report["oof_smape"])
    # what `train` prints: one line per estimate, its OOF and validation SMAPE and their difference
    header, *lines = validation_table(report).splitlines()
    assert header.split() == ["SMAPE", "out", "of", "fold", "validation", "difference"]
    assert [line.split()[0] for line in lines] == list(report["oof_smape"])
    for line in lines:
        name, oof, validation, difference = line.split()
        assert float(oof) == pytest.approx(report["oof_smape"][name]["all"], abs=0.005)
        assert float(validation) == pytest.approx(report["validation_smape"][name], abs=0.005)
        assert float(difference) == pytest.approx(float(validation) - float(oof), abs=0.011)
    assert validation_table({**report, "validation_smape": {}}) == ""
    oof_rows = (output / "oof_predictions.csv").read_text().splitlines()
    assert len(oof_rows) == 1 + len(labelled)


def test_folds_are_grouped_and_cover_their_rows():
    groups = np.repeat(np.arange(90), 3)[:250]
    rows = np.arange(10, 250)
    folds = Folds.grouped(rows, groups, k=5, seed=3)
    assert folds.k == 5
    for train_rows, held_out in folds:
        assert not set(groups[train_rows].tolist()) & set(groups[held_out].tolist())
        assert sorted(np.concatenate([train_rows, held_out]).tolist()) == rows.tolist()
    assert sorted(np.concatenate([held for _, held in folds]).tolist()) == rows.tolist()
    with pytest.raises(ValueError, match="at least 2 folds"):
        Folds.grouped(rows, groups, k=1, seed=3)
    with pytest.raises(ValueError, match="distinct image links"):
        Folds.grouped(np.arange(6), groups, k=5, seed=3)
