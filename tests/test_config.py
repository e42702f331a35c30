"""Settings: concerns and the settings hash, and the configuration reference page."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from bluref_ray.config import (
    CONCERNS,
    LOSSES,
    STRATEGIES,
    IngestConfig,
    PseudoGTConfig,
    settings_hash,
)
from bluref_ray.config.reference import reference_markdown

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("cls", [IngestConfig, PseudoGTConfig])
def test_hashed_sections_give_every_setting_a_concern(cls):
    concerns = {f.name: f.metadata.get("concern") for f in dataclasses.fields(cls)}
    assert not [k for k, c in concerns.items() if c not in CONCERNS], concerns


def test_the_settings_hash_covers_method_and_matcher_not_execution():
    pg = PseudoGTConfig()
    same = dataclasses.replace(pg, batch_size=3, targets_per_shard=5, concurrency=4,
                               cpus_per_actor=2.0, gpus_per_actor=0.5, limit=7, overwrite=True)
    assert settings_hash(same) == settings_hash(pg)
    for change in ({"tau": 0.5}, {"strategy": "weighted"}, {"matcher": "dis"},
                   {"dis_preset": "fast"}, {"round": 2}):
        assert settings_hash(dataclasses.replace(pg, **change)) != settings_hash(pg), change
    ingest = IngestConfig()
    assert settings_hash(dataclasses.replace(ingest, clips_per_task=4)) == settings_hash(ingest)
    assert settings_hash(dataclasses.replace(ingest, delta=3)) != settings_hash(ingest)


def test_a_setting_without_a_concern_cannot_be_hashed():
    @dataclasses.dataclass(frozen=True)
    class Section:
        x: int = 1

    with pytest.raises(TypeError, match="Section.x declares no concern"):
        settings_hash(Section())


def test_the_names_settings_accept_are_the_ones_the_code_runs():
    import torch

    from bluref_ray.fusion import aligner, fuse
    from bluref_ray.losses import build_loss
    from bluref_ray.matching import build_matcher

    x = torch.rand(1, 3, 24, 24)
    mask = torch.ones(1, 1, 24, 24)
    for name in LOSSES:  # each builds, and a right prediction costs less than a wrong one
        assert build_loss(name)(x, x, mask) < build_loss(name)(x, 1 - x, mask), name
    align = aligner(build_matcher("dis"))
    for name in STRATEGIES:
        assert fuse(name, x, x[:, None], align, kernel_size=5).image.shape == x.shape


def test_the_configuration_reference_is_current():
    page = (DOCS / "configuration.md").read_text()
    assert page == reference_markdown(), (
        "docs/configuration.md is out of date: python -m bluref_ray.config.reference > "
        "docs/configuration.md")


def test_path_settings_are_made_absolute_on_the_driver(tmp_path, monkeypatch):
    """A relative checkpoint or folder sent to an actor or a training worker would be read
    from the folder that worker runs in, on its node."""
    from bluref_ray.config import Blur2BlurConfig, PseudoGTConfig, TrainConfig
    from bluref_ray.models import absolute_paths

    monkeypatch.chdir(tmp_path)
    t = absolute_paths(TrainConfig(init="round_1/model.pt", val="data/test"))
    assert (t.init, t.val) == (f"{tmp_path}/round_1/model.pt", f"{tmp_path}/data/test")
    pg = absolute_paths(PseudoGTConfig(deblurrer="a.pt+b.pt"))
    assert pg.deblurrer == f"{tmp_path}/a.pt+{tmp_path}/b.pt"  # each part of a chain
    assert pg.matcher_checkpoint == PseudoGTConfig().matcher_checkpoint  # package://
    assert pg.check_selector == "auto"  # a keyword, not a file
    b = absolute_paths(Blur2BlurConfig(known="s3://bucket/known", kernel="k.pt"))
    assert (b.known, b.kernel, b.deblurrer) == ("s3://bucket/known", f"{tmp_path}/k.pt", None)


def test_the_check_rule_follows_the_matcher_unless_set():
    """``check_selector=auto``: the shipped selector with the learned matcher (whose confidence
    it was trained on), the physical rule with DIS; each with its own "already sharp" level
    unless ``check_sharp`` is set."""
    from bluref_ray.config.method import SHIPPED_SELECTOR

    learned, dis = PseudoGTConfig(), PseudoGTConfig(matcher="dis")
    assert (learned.selector_uri(), learned.sharp_level()) == (SHIPPED_SELECTOR, 2.5)
    assert (dis.selector_uri(), dis.sharp_level()) == ("", 2.0)
    # paired trees (the paper protocol: references farther away) get a stricter selector
    assert (learned.sharp_level("paper"), learned.selector_p("paper")) == (2.0, 0.8)
    assert (learned.sharp_level("camera"), learned.selector_p("camera")) == (2.5, 0.7)
    assert dis.sharp_level("paper") == 2.0
    mine = PseudoGTConfig(check_sharp=3.0, check_selector_p=0.6)  # explicit values hold for both
    assert {(mine.sharp_level(p), mine.selector_p(p)) for p in ("camera", "paper")} == {(3.0, 0.6)}
    physical = PseudoGTConfig(check_selector="none", check_sharp=3.0)
    assert (physical.selector_uri(), physical.sharp_level()) == ("", 3.0)
    assert PseudoGTConfig(matcher="dis", check_selector="my.pt").selector_uri() == "my.pt"
    assert PseudoGTConfig(check=False).selector_uri() == ""  # no check, no selector
    from bluref_ray.config import load_config

    cli = load_config(overrides=["pseudo_gt.check_selector=none"]).pseudo_gt  # as --set gives it
    assert (cli.selector_uri(), cli.sharp_level()) == ("", 2.0)
    with pytest.raises(ValueError, match="check_sharp"):
        PseudoGTConfig(check_sharp=-1.0).validate()
