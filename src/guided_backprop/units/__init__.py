"""What units of a higher layer respond to: :mod:`.receptive` (receptive fields traced from the model;
:mod:`.trace` is the per-operation tracer), :mod:`.grids` (the top-9 unit grids: the images where a
channel fires most, cropped to its receptive field, beside their guided-backprop maps) and :mod:`.cache`
(where channels fire over a folder, kept on disk).

Importing this package loads none of its modules.
"""
