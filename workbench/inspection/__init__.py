"""Inspection: the hard-case queue of an evaluation, the ipywidgets gallery, the napari viewer,
label corrections as versions, and fine-tuning on corrected labels (:mod:`.feedback`)."""
