"""Config system: presets load, overrides coerce, unknown keys and impossible values fail naming the key."""
from pathlib import Path

import pytest

from s2gr_ray.config import Config, ConfigError, config_from_dict, load_config, valid_keys

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads(preset):
    cfg = load_config(preset)
    assert cfg.name == preset.stem
    assert config_from_dict(cfg.to_dict()) == cfg


def test_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {"quickstart", "beauty", "beauty_paper"} <= names


def test_base_preset_inherits_and_overrides():
    paper = load_config(REPO / "configs" / "beauty_paper.yaml")
    assert paper.data.path == "../shared/data/amazon-beauty"  # from base
    assert paper.model.d_model == 128 and paper.train.use_gpu


def test_overrides_coerce_types():
    cfg = load_config(None, ["train.lr=3e-4", "tokenizer.codebook_sizes=[8,16]", "model.detach_think=true",
                             "data.format=sequences", "data.path=/x", "eval.ks=[1,5,10]", "tokenizer.num_coarse=4"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.tokenizer.codebook_sizes == (8, 16)
    assert cfg.model.detach_think is True
    assert cfg.eval.ks == (1, 5, 10)
    assert cfg.tokenizer.num_coarse == 4 and type(cfg.tokenizer.num_coarse) is int and cfg.data.path == "/x"


def test_dataset_location_override_on_preset():
    cfg = load_config(REPO / "configs" / "beauty.yaml", ["data.path=/somewhere/else"])
    assert cfg.data.path == "/somewhere/else"


@pytest.mark.parametrize("override,needle", [
    ("train.lrr=1", "did you mean 'train.lr'"),
    ("modle.d_model=3", "unknown config key"),
    ("train.batch_size=abc", "train.batch_size"),
    ("model.placement=sideways", "model.placement"),
    ("train.batch_size=0", "train.batch_size"),
    ("model.dropout=1.5", "model.dropout"),
    ("train.lr=inf", r"train\.lr = 'inf' is not a finite number"),
    ("model.w_reg=nan", r"model\.w_reg = 'nan' is not a finite number"),
    ("eval.beam_size=5", "eval.beam_size"),
    ("tokenizer.codebook_sizes=[]", "tokenizer.codebook_sizes"),
    ("tokenizer.num_coarse=300", "tokenizer.num_coarse"),
    ("train.monitor=auc@10", "train.monitor"),
    ("model.detach_think=maybe", "model.detach_think"),
    ("model.w_rec=0", "code heads learn only from L_Rec"),
    ("train.eval_every=2", "no longer exists: validation runs after every epoch"),
    ("seed=3", "no longer exists: it was never read; set train.seed"),
    ("train", "key=value"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, [override])


@pytest.mark.parametrize("overrides,needle", [
    (["train.use_gpu=true", "train.gpus_per_worker=0"], "must be > 0 with train.use_gpu"),
    (["train.use_gpu=true", "train.num_workers=2", "train.gpus_per_worker=0.5"], "exactly one GPU each"),
    (["train.use_gpu=true", "train.num_workers=2", "train.gpus_per_worker=2"], "exactly one GPU each"),
])
def test_gpu_workers_need_one_whole_gpu_each(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)
    load_config(None, ["train.use_gpu=true", "train.num_workers=1", "train.gpus_per_worker=0.5"])  # one worker: fine
    load_config(None, ["train.use_gpu=true", "train.num_workers=2"])


def test_cross_field_batch_divisible_by_workers():
    with pytest.raises(ConfigError, match="divisible"):
        load_config(None, ["train.num_workers=3", "train.batch_size=256"])


def test_non_synthetic_format_needs_path():
    with pytest.raises(ConfigError, match="data.path"):
        load_config(None, ["data.format=sequences"])


def test_unknown_key_in_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  d_modle: 3\n")
    with pytest.raises(ConfigError, match="model.d_model"):
        load_config(p)


def test_section_hash_is_stable_and_sensitive():
    a, b = Config(), Config().replace(**{"tokenizer.latent_dim": 8})
    assert a.section_hash("tokenizer") == Config().section_hash("tokenizer")
    assert a.section_hash("tokenizer") != b.section_hash("tokenizer")
    assert a.section_hash("data") == b.section_hash("data")
    runtime = Config().replace(**{"tokenizer.log_every": 3, "tokenizer.device": "cpu", "embed.batch_size": 7,
                                  "embed.device": "cpu", "embed.cache_dir": "/elsewhere"})
    assert runtime.section_hash("tokenizer", "embed") == a.section_hash("tokenizer", "embed")  # RUNTIME_KEYS
    assert runtime.tokenizer.log_every == 3  # the config itself keeps the values
    # a key added later (config.ADDED_KEYS) leaves the hash of its section as it was before the key, at its old
    # behaviour, and changes it otherwise
    import hashlib
    import json

    from s2gr_ray.config import ADDED_KEYS

    before = {"train": {k: v for k, v in a.to_dict()["train"].items() if f"train.{k}" not in ADDED_KEYS}}
    assert len(before["train"]) < len(a.to_dict()["train"])  # train.shuffle among them
    assert a.section_hash("train") == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert Config().replace(**{"train.shuffle": "global"}).section_hash("train") != a.section_hash("train")


def test_valid_keys_cover_sections():
    keys = valid_keys()
    assert "train.zero_stage" in keys and "tokenizer.codebook_sizes" in keys and "model.n_think" in keys


def test_saved_configs_with_a_retired_key_still_load():
    """RUN/config.yaml and manifests written before a key was retired load without it (s2gr evaluate, serving)."""
    from s2gr_ray.config import config_from_dict

    saved = load_config(None, []).to_dict()
    saved["train"]["eval_every"] = 1
    saved["seed"] = 0  # the retired top-level seed of older RUN/config.yaml files
    assert config_from_dict(saved).train.max_epochs == load_config(None, []).train.max_epochs


def test_a_saved_synthetic_run_with_a_data_path_still_loads():
    """Runs written before data.path with the synthetic format was refused: their records load (the path was never
    read), while a new config with the pair is refused."""
    saved = load_config(None, []).to_dict()
    saved["data"]["path"] = "/data/beauty"
    assert config_from_dict(saved).data.path == "" and config_from_dict(saved).data.format == "synthetic"
    with pytest.raises(ConfigError, match="has no effect with data.format = 'synthetic'"):
        load_config(None, ["data.path=/data/beauty"])
    saved["data"]["format"] = "sequences"  # a real dataset's path is kept
    assert config_from_dict(saved).data.path == "/data/beauty"


def test_a_preset_with_a_repeated_section_is_refused_and_1e_minus_4_is_a_number(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("model:\n  d_model: 64\n  num_heads: 2\ntrain:\n  lr: 1e-4\nmodel:\n  d_model: 128\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml is not valid YAML: key 'model' appears twice in one mapping "
                                          r"\(first at line 1\); keep one of them(.|\n)*mine\.yaml\", line 6"):
        load_config(preset)
    preset.write_text("model:\n  d_model: 64\ntrain:\n  lr: 1e-4\n  weight_decay: 5E-3\n")
    cfg = load_config(preset)
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 5e-3 and cfg.model.d_model == 64


@pytest.mark.parametrize("text,match", [
    ("base: missing.yaml\n", r"missing\.yaml does not exist \(named by 'base:' in .*child\.yaml\)"),
    ("base: [a.yaml]\n", r"child\.yaml: base must be the file name of another preset"),
    ("train:\n  lrr: 0.1\n", r"config file .*child\.yaml: unknown config key 'train\.lrr'.*'train\.lr'"),
    ("train:\n  batch_size: many\n", r"config file .*child\.yaml: train\.batch_size = 'many' is not an integer"),
])
def test_preset_errors_name_the_file(tmp_path, text, match):
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(child)


def test_an_empty_section_in_a_preset_is_no_section(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("model:\n  # d_model: 64\ntrain:\n  lr: 0.01\n")
    assert load_config(preset).train.lr == 0.01 and load_config(preset).model.d_model == load_config(None).model.d_model


def test_a_config_argument_that_is_no_file_says_what_it_probably_meant(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"model\.d_model does not exist; to set the config key model\.d_model, "
                                          r"write model\.d_model=VALUE"):
        load_config("model.d_model")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text("train:\n  lr: 0.01\n")
    monkeypatch.chdir(tmp_path)
    for name in ("mine", "mine.yaml"):
        with pytest.raises(ConfigError, match=rf"config file {name} does not exist; did you mean configs/mine\.yaml\?"):
            load_config(name)
    with pytest.raises(ConfigError, match=r"config file other does not exist$"):
        load_config("other")


def test_saved_configs_keep_strings_that_look_like_numbers(tmp_path):
    from s2gr_ray.config import dump_yaml

    cfg = load_config(None, ["name=1e5", "data.user_column=2E3", "train.lr=1e-4"])
    (tmp_path / "config.yaml").write_text(dump_yaml(cfg))  # as RUN/config.yaml is written
    back = load_config(tmp_path / "config.yaml")
    assert (back.name, back.data.user_column, back.train.lr) == ("1e5", "2E3", 1e-4)
