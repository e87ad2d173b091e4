import pytest

from vlpkit.pretraining.shapes import prepare_shapes


@pytest.fixture(scope="session")
def shapes_setup(tmp_path_factory):
    """A small shapes world (40 images) with its tokenizer, shared by the pretraining tests."""
    return prepare_shapes(tmp_path_factory.mktemp("shapes") / "world", num_images=40, seed=3, vocab_size=200)


def files_data_section(setup, folder, objects) -> dict:
    """A `data: {kind: files}` section over the shapes world's official files (the real-data path), with the VG
    object vocabulary `objects` and the world's attributes and tokenizer saved under `folder`."""
    from vlpkit.data.tokenization import save_tokenizer

    world = setup.world
    objects.save(folder / "objects.json")
    setup.attribute_vocab.save(folder / "attributes.json")
    save_tokenizer(setup.tokenizer, folder / "tok")
    return {"kind": "files", "tokenizer": str(folder / "tok"),
            "coco": {"instances": str(world.instances("train")), "captions": str(world.captions("train")),
                     "images": str(world.image_dir("train"))},
            "vg": {k: str(world.vg(k)) for k in ("image_data", "objects", "attributes", "region_descriptions")}
            | {"images": str(world.root / "images"), "object_vocab": str(folder / "objects.json"),
               "attribute_vocab": str(folder / "attributes.json")}}
