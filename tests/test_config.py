import pytest

from unetzoo.config import Config
from unetzoo.errors import UnetzooError


def test_set_overrides_and_round_trip(tmp_path):
    config = Config()
    config.set("train.lr=3e-4")
    config.set("augment.elastic_p=0.2")
    config.set("model_args.n_stages=5")
    config.set("data.patch_size=[8, 16, 16]")
    config.save(tmp_path / "config.json")
    loaded = Config.load(tmp_path / "config.json")
    assert loaded.train.lr == 3e-4
    assert loaded.augment.elastic_p == 0.2
    assert loaded.model_args == {"n_stages": 5}
    assert loaded.data.patch_size == [8, 16, 16]
    assert loaded == config


def test_unknown_field_is_an_error():
    with pytest.raises(UnetzooError, match="unknown config field"):
        Config().set("train.learning_rate=1")
