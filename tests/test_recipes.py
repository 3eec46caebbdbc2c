"""The recipes shipped in recipes/ stay valid for the options they name."""
from pathlib import Path

import pytest

from dimap_struct.options import FinetuneOptions, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 2


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_a_recipe_makes_valid_options(path):
    recipe = load_recipe(path)
    assert recipe["command"] == "dimap-finetune"
    options = FinetuneOptions.make(recipe)
    assert options.model and options.epochs > 0 and options.batch_size % 2 == 0

