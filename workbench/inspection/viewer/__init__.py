"""napari inspection of hard cases: image, GT and predicted boxes coloured by outcome, editable labels.

:mod:`.layers` converts boxes to napari rectangles and back (exactly), styles and builds the box
layers; :mod:`.inspector` holds the :class:`Inspector` window with its dock and the entry points
(:func:`open_queue`, :func:`open_image`, :func:`screenshot`). napari and Qt are imported only when
a window opens, so importing this package (as the CLI does to check for a display) stays light.
"""
from workbench.inspection.hardcases import read_display_image
from workbench.inspection.viewer.inspector import (
    Inspector, NoDisplayError, has_display, import_napari, open_image, open_queue, require_display, screenshot,
    screenshot_command, screenshot_figure)
from workbench.inspection.viewer.layers import (
    EDITED_COLOUR, box_layer_style, boxes_to_rectangles, contrast_limits, contrast_ratio, edge_width_for,
    image_background, image_layer_kwargs, layer_boxes, new_box_layer, readable_on, rectangles_to_boxes,
    update_box_layer)

__all__ = ["EDITED_COLOUR", "Inspector", "NoDisplayError", "box_layer_style", "boxes_to_rectangles",
           "contrast_limits", "contrast_ratio", "edge_width_for", "has_display", "image_background",
           "image_layer_kwargs", "import_napari", "layer_boxes", "new_box_layer", "open_image", "open_queue",
           "read_display_image", "readable_on", "rectangles_to_boxes", "require_display", "screenshot",
           "screenshot_command", "screenshot_figure", "update_box_layer"]
