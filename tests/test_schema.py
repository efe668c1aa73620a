"""The config schema: every shipped experiment passes it, and it reads types as a user means them."""
from typing import Literal

import pytest

from src.config import CONFIG_DIR, compose_config
from src.errors import UserInputError
from src.schema import POSITIVE, PositiveInt, Range, allows, check_config, check_value, describe

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("trainer", ["default", "gpu", "ddp_cpu"])
def test_every_shipped_experiment_passes_the_schema(tmp_path, experiment, trainer):
    check_config(compose_config([f"+experiment={experiment}", f"trainer={trainer}"], tmp_path))


def test_types_are_read_as_a_user_means_them():
    assert not allows(int, True) and not allows(PositiveInt, True)  # YAML's true is no number
    assert allows(float, 3) and not allows(float, "3")
    assert allows(PositiveInt | Literal["auto"] | None, "auto") and allows(PositiveInt | None, None)
    assert not allows(Literal[1, 2], 1.0) and not allows(Literal["1"], 1)
    assert Range(at_least=-1).admits(-1) and not POSITIVE.admits(0)
    assert describe(PositiveInt | Literal["auto"] | None) == "a positive integer, one of auto or null"
    with pytest.raises(UserInputError, match=r"^x.y: 'a' is not a positive integer$"):
        check_value("x.y", "a", PositiveInt)
