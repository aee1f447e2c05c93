"""Honest stacking: the rows the blend weights are fitted on were seen by no component."""

from __future__ import annotations

import json

import numpy as np
import pytest

from client.blend import COMPONENTS
from tests.conftest import SAMPLE
from training import pipeline
from training.config import TrainConfig
from training.finetune import FineTuneSettings
from training.fusion import FusionSettings
from training.gbm import GbmSettings
from training.pipeline import split_rows

# (function in training.pipeline, position of its training-rows argument)
TRAINERS = {"fine_tune": 4, "train_fusion": 2, "train_gbm": 2, "fit_lexical": 3, "retrieval_estimates": 3}


@pytest.fixture(scope="module")
def spied_run(tmp_path_factory):
    """A small training run that records the rows every component and the blend fit was given."""
    calls: dict[str, list] = {}
    monkeypatch = pytest.MonkeyPatch()

    def spy(name: str):
        real = getattr(pipeline, name)

        def wrapper(*args, **kwargs):
            calls.setdefault(name, []).append(args)
            result = real(*args, **kwargs)
            if name == "split_rows":
                calls["splits"] = result
            return result

        monkeypatch.setattr(pipeline, name, wrapper)

    for name in (*TRAINERS, "fit_blend_weights", "split_rows"):
        spy(name)
    output = tmp_path_factory.mktemp("spied")
    try:
        pipeline.train(TrainConfig(
            csv=SAMPLE / "train.csv", output=output, images_dir=SAMPLE / "images", ocr_engine="none",
            limit_rows=160, fine_tuning=FineTuneSettings(epochs=1), fusion=FusionSettings(max_epochs=1),
            gbm=GbmSettings(max_rounds=20),
        ))
    finally:
        monkeypatch.undo()
    return output, calls


def test_every_component_trains_on_fit_rows_only(spied_run):
    _, calls = spied_run
    splits = calls["splits"]
    for name, position in TRAINERS.items():
        (args,) = calls[name]
        trained_on = set(np.asarray(args[position]).tolist())
        assert trained_on == set(splits.fit.tolist()), name
        assert not trained_on & set(splits.blend.tolist()), f"{name} trained on blend rows"
        assert not trained_on & set(splits.validation.tolist()), f"{name} trained on validation rows"


def test_blend_weights_are_fitted_on_the_held_out_rows(spied_run):
    output, calls = spied_run
    splits = calls["splits"]
    (args,) = calls["fit_blend_weights"]
    component_log_prices, prices = args
    assert component_log_prices.shape == (len(splits.blend), len(COMPONENTS))
    table = pipeline.read_catalog_csv(SAMPLE / "train.csv", with_prices=True).subset(range(160))
    np.testing.assert_array_equal(prices, table.prices[splits.blend])
    # early stopping looks at the blend rows, never at the validation rows
    for name in ("train_fusion", "train_gbm"):
        (call,) = calls[name]
        assert set(np.asarray(call[3]).tolist()) == set(splits.blend.tolist())
    written = json.loads((output / "split.json").read_text())
    assert written["blend"] == [table.sample_ids[i] for i in splits.blend]


def test_blend_weights_are_non_negative_and_sum_to_one(spied_run):
    output, _ = spied_run
    blend = json.loads((output / "blend.json").read_text())
    assert blend["components"] == list(COMPONENTS)
    for key in ("fitted_weights", "seed_weights"):
        weights = np.asarray(blend[key])
        assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0)


def test_split_parts_are_disjoint_grouped_and_cover_every_row():
    groups = np.repeat(np.arange(400), 3)[:1000]
    splits = split_rows(groups, val_fraction=0.2, blend_fraction=0.15, seed=7)
    parts = [set(groups[rows].tolist()) for rows in (splits.fit, splits.blend, splits.validation)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert sorted(np.concatenate([splits.fit, splits.blend, splits.validation]).tolist()) == list(range(1000))
