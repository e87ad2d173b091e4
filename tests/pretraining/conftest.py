import pytest

from vlpkit.pretraining.shapes import prepare_shapes


@pytest.fixture(scope="session")
def shapes_setup(tmp_path_factory):
    """A small shapes world (40 images) with its tokenizer, shared by the pretraining tests."""
    return prepare_shapes(tmp_path_factory.mktemp("shapes") / "world", num_images=40, seed=3, vocab_size=200)
