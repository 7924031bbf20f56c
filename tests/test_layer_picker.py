"""The docks' layer pickers (`_napari.layer_picker`, magicgui's layer ComboBox): the dock's filter, the optional
"(none)", following layers added, removed and renamed, and one `changed` per real change of the choice."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui

def test_choices_follow_the_viewer_and_the_docks_filter(make_napari_viewer, qtbot):
    from napari.layers import Image, Shapes

    from nucseg._napari.layer_picker import layer_picker
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((10, 10, 3), np.uint8), rgb=True, name="a")
    p = layer_picker(viewer, Image, predicate=lambda layer: "skip" not in layer.metadata)
    o = layer_picker(viewer, Shapes, optional=True)
    p.setToolTip("hint")
    assert p.current_layer().name == "a" and p.toolTip() == "a\nhint"
    assert o.current_layer() is None and o.currentText() == "(none)"
    viewer.add_image(np.zeros((10, 10)), name="b")
    viewer.add_image(np.zeros((10, 10)), name="c", metadata={"skip": 1})
    assert [layer.name for layer in p.layers()] == ["a", "b"]
    seen = []
    p.changed.connect(seen.append)
    p.set_layer("b")
    assert p.current_layer().name == "b" and seen and p.toolTip() == "b\nhint"
    viewer.layers["b"].name = "bb"
    assert p.current_layer().name == "bb"
    viewer.layers.remove("bb")
    assert p.current_layer().name == "a"
    viewer.add_shapes(name="s")
    assert [layer.name for layer in o.layers()] == ["s"]
    o.set_layer("s")
    assert o.current_layer().name == "s"
    o.set_layer(None)
    assert o.current_layer() is None


def test_one_changed_per_change_of_the_chosen_layer(make_napari_viewer, qtbot):
    from napari.layers import Labels

    from nucseg._napari.layer_picker import layer_picker
    viewer = make_napari_viewer()
    p = layer_picker(viewer, Labels)
    seen = []
    p.changed.connect(seen.append)
    a = viewer.add_labels(np.zeros((5, 5), int), name="a")
    assert seen == [a]
    b = viewer.add_labels(np.zeros((5, 5), int), name="b")
    assert seen == [a]
    a.name = "a2"
    assert seen == [a] and p.currentText() == "a2"
    viewer.layers.remove(a)
    assert seen == [a, b]
    viewer.layers.remove(b)
    assert seen == [a, b, None] and p.current_layer() is None
