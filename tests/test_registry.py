import pytest

from cellcls.classes import CHANNELS, CLASSES, CLASS_NAMES, NEGATIVE, NUM_CLASSES, class_by_name
from cellcls.errors import RegistryError
from cellcls.registry import Registry


def test_registry_register_get_and_names():
    reg: Registry = Registry("loss")

    @reg.register("focal")
    def focal():
        return "f"

    reg.add("bce", lambda: "b")
    assert reg.get("focal") is focal
    assert reg.names() == ["bce", "focal"]
    assert "bce" in reg and len(reg) == 2


def test_unknown_name_lists_the_choices():
    reg: Registry = Registry("segmentation backend")
    reg.add("hpa", object())
    reg.add("classical", object())
    with pytest.raises(RegistryError, match=r"unknown segmentation backend 'cellpose'; choose one of: classical, hpa"):
        reg.get("cellpose")


def test_double_registration_is_refused():
    reg: Registry = Registry("tta")
    reg.add("hflip", 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("hflip", 2)


def test_class_vocabulary_matches_the_competition():
    assert NUM_CLASSES == 19 and len(CLASS_NAMES) == 19
    assert [c.id for c in CLASSES] == list(range(19))
    assert CLASS_NAMES[0] == "Nucleoplasm" and CLASS_NAMES[NEGATIVE] == "Negative"
    assert CLASSES[11].name == "Mitotic spindle" and CLASSES[11].train_images == 78
    assert CHANNELS == ("red", "green", "blue", "yellow")
    assert class_by_name("cytosol").id == 16
    assert all(len(c.colour) == 3 and all(0 <= v <= 255 for v in c.colour) for c in CLASSES)
