"""Maps -> pictures: :mod:`.render` (maps to uint8 pictures: normalisation, colour maps, heat maps,
overlays, atomic save), :mod:`.grid` (the class x method grid laid out once: columns, row labels,
headline), :mod:`.panels` (the grid and other panels drawn with Pillow, for files) and :mod:`.plot`
(the grid as a matplotlib figure, for notebooks: ``gbp.show``).

Nothing here is imported by the engine; importing this package loads none of its modules.
"""
