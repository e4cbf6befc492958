"""One run, one config: YAML round trips, dotted overrides, strict keys and types, help for every field, the
shipped configs and the notebooks' config helper."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from vlmq_core import config
from vlmq_core.collect import SourceConfig
from vlmq_core.config import ConfigError
from vlmq_core.experiments import notebook_configs
from vlmq_core.run import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "gpu").glob("*.yaml"))


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = RunConfig()
    path = config.save(cfg, tmp_path / "c.yaml")
    assert load_config(path) == cfg
    data = yaml.safe_load(path.read_text())
    assert list(data) == [f.name for f in dataclasses.fields(RunConfig)]  # every section, in order


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    assert load_config(config.save(cfg, tmp_path / "again.yaml")) == cfg


def test_the_notebook_03_configs_differ_only_where_sft_and_afsft_do():
    """SFT and AFSFT are compared on the same data, play, evaluation and optimisation: the two files may differ
    only in the run directory, the loss and the critic."""
    sft, afsft = (load_config(ROOT / "configs" / f"numberline_{n}.yaml") for n in ("sft", "afsft"))
    differ = {key.split(".")[0] for key in config.differences(sft, afsft)}
    assert differ == {"run_dir", "loss", "critic"}
    assert (sft.loss.actor, sft.loss.critic_weight, afsft.loss.actor) == ("sft", 0.0, "afsft")


def test_the_pixel_numberline_configs_are_the_text_ones_shown_the_image_alone():
    """configs/numberline_pixels_*.yaml: the text configs with embedded-vlm shown the image alone, on their own
    dataset, scored on notebook 04's 100 episodes; SFT and AFSFT differ only as the text pair does."""
    for n in ("sft", "afsft"):
        text, pixels = (load_config(ROOT / "configs" / f"numberline{p}_{n}.yaml") for p in ("", "_pixels"))
        assert set(config.differences(text, pixels)) == {
            "run_dir",
            "model.name",
            "collect.observation_text",
            "data.path",
            "eval.episodes",
            "eval.seed",
        }
        # scored on the 100 seeds notebook 04 scores the text AFSFT run on, so the two compare episode for episode
        assert (pixels.model.name, pixels.collect.observation_text, pixels.eval.episodes, pixels.eval.seed) == (
            "embedded-vlm",
            False,
            100,
            20_000,
        )
    sft, afsft = (load_config(ROOT / "configs" / f"numberline_pixels_{n}.yaml") for n in ("sft", "afsft"))
    assert {key.split(".")[0] for key in config.differences(sft, afsft)} == {"run_dir", "loss", "critic"}
    assert sft.data.path == afsft.data.path != load_config(ROOT / "configs" / "numberline_afsft.yaml").data.path


def test_each_notebook_03_run_has_its_own_default_metrics_file():
    from vlmq_core.experiments import metrics_file

    pixels = {n: f"configs/numberline_pixels_{n}.yaml" for n in ("sft", "afsft")}
    assert [metrics_file("03_offline_afsft", t) for t in ("NumberLine", "Points24")] == [
        "nbs_outputs/03_offline_afsft.metrics.json",
        "nbs_outputs/03_offline_afsft_points24.metrics.json",
    ]
    assert metrics_file("03_offline_afsft", "NumberLine", pixels) == (
        "nbs_outputs/03_offline_afsft_numberline_pixels.metrics.json"  # not the text runs' file
    )


def test_dotted_overrides_reach_every_level_and_keep_types():
    cfg = load_config(
        None,
        ["train.steps=400", "loss.beta=0.1", "critic.init_q=min_return_to_go", "data.sources.1.episodes=7"]
        + ["lora.target_modules=[q_proj, v_proj]", "model.quantization=null", "train.lr_lora=3e-4", "run_dir=x"],
    )
    assert cfg.train.steps == 400 and cfg.loss.beta == 0.1 and cfg.critic.init_q == "min_return_to_go"
    assert cfg.data.sources[1] == SourceConfig("agent", 7, 1000)
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.model.quantization is None
    assert cfg.train.lr_lora == 3e-4 and isinstance(cfg.train.lr_lora, float) and cfg.run_dir == "x"
    assert config.apply_overrides(cfg, {"critic.init_q": -14}).critic.init_q == -14.0  # a mapping works too
    assert RunConfig().train.steps == 512  # overrides build a new config


def test_yaml_numbers_in_exponent_form_are_numbers(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr_lora: 3e-4\n  steps: 2.0\n")  # YAML 1.1 reads 3e-4 as a string
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.train.lr_lora == 3e-4 and cfg.train.steps == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("no.such.key=1", "Unknown config key no.such.key: the valid keys at the top level are run_dir, model"),
        ("train.stepz=1", "Unknown config key train.stepz: .* Did you mean train.steps\\?"),
        ("train.steps=abc", "train.steps must be an integer, not 'abc'"),
        ("train.steps=1.5", "train.steps must be an integer"),
        ("train.bf16=maybe", "train.bf16 must be true or false"),
        ("loss.advantage=gae", "loss.advantage must be one of 'q', 'td', not 'gae'"),
        ("critic.init_q=lowest", "critic.init_q must be float or one of 'min_return_to_go' or None"),
        ("data.sources.3.episodes=1", "data.sources.3: data.sources has 3 items, indexed 0..2"),
        ("data.sources.0.strategy=greedy", "data.sources.0.strategy must be one of"),
        ("train.steps.x=1", "train.steps is a single value"),
        ("loss.td_steps=0", "loss.td_steps must be >= 1"),
        ("collect.task=Nope", "collect.task: unknown task 'Nope'; known tasks: NumberLine"),
        ("train.steps", "is not of the form key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key_in_one_sentence(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(ROOT / "configs" / "numberline_afsft.yaml", [override])
    assert "\n" not in str(err.value)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "unknown.yaml").write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="train.stepz"):
        load_config(tmp_path / "unknown.yaml")


def test_every_field_of_every_section_has_help_text():
    rows = config.options(RunConfig)
    assert len(rows) > 50
    missing = [key for key, _, _, doc in rows if not doc.strip()]
    assert not missing, missing
    keys = [key for key, *_ in rows]
    assert "train.tau" in keys and "critic.init_q" in keys and "data.sources.N.strategy" in keys
    assert "critic.tau" not in keys  # training settings live in the training config, not the saved policy


def test_notebook_configs_share_one_dataset_and_write_under_out_dir(tmp_path):
    files = {n: str(ROOT / "configs" / f"numberline_{n}.yaml") for n in ("sft", "afsft")}
    cfgs = notebook_configs(files, ["train.steps=3"], out_dir=str(tmp_path))
    assert {n: (c.run_dir, c.data.path, c.train.steps) for n, c in cfgs.items()} == {
        n: (f"{tmp_path}/{n}", f"{tmp_path}/data", 3) for n in files
    }
    bad = tmp_path / "other.yaml"
    bad.write_text(Path(files["sft"]).read_text().replace("episodes: 120", "episodes: 100"))
    with pytest.raises(ConfigError, match="must share data .* data.sources"):
        notebook_configs({"sft": str(bad), "afsft": files["afsft"]})
