from pathlib import Path

import pytest

from sweeper.errors import SweeperError
from sweeper.training.config import TrainConfig, load_config_file


def test_defaults_validate() -> None:
    TrainConfig().validate()


def test_unknown_key_names_the_key_and_a_suggestion() -> None:
    with pytest.raises(SweeperError, match="unknown key 'batch_sise'; did you mean 'batch_size'"):
        TrainConfig.from_dict({"batch_sise": 64})


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"lr": -0.1}, "lr=-0.1"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"model": "vgg15"}, "unknown model 'vgg15'"),
        ({"model": "resnet20", "pretrained": True}, "pretrained"),
        ({"optimizer": "adamm"}, "optimizer='adamm'"),
        ({"schedule": "exp"}, "schedule='exp'"),
        ({"lr": "fast"}, "lr='fast'"),
        ({"epochs": 2.5}, "epochs=2.5"),
        ({"milestones": [5, 8]}, "milestones"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"patience": 0}, "patience=0"),
    ],
)
def test_bad_values_name_the_field(values: dict, field: str) -> None:
    with pytest.raises(SweeperError, match=field.replace("[", r"\[")):
        TrainConfig.from_dict(values)


def test_ints_are_accepted_for_floats() -> None:
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0


def test_yaml_and_json_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("model: vgg11\nlr: 0.01\nhidden: [256]\n")
    (tmp_path / "b.json").write_text('{"model": "resnet20", "epochs": 3}')
    assert TrainConfig.from_dict(load_config_file(tmp_path / "a.yaml")).hidden == [256]
    assert TrainConfig.from_dict(load_config_file(tmp_path / "b.json")).epochs == 3
    (tmp_path / "c.yaml").write_text("- just\n- a list\n")
    with pytest.raises(SweeperError, match="c.yaml: expected a mapping"):
        load_config_file(tmp_path / "c.yaml")
    with pytest.raises(SweeperError, match="cannot read"):
        load_config_file(tmp_path / "missing.yaml")
