"""Reading and writing images, slides and label maps.

- `nucseg.io.slides`: `open_slide` (SVS, OME-TIFF, TIFF, PNG, JPEG as a lazy pyramid with microns per pixel),
  `read_image` (a whole tile), `list_images` (a folder of tiles), `is_supported`.
- `nucseg.io.masks`: `read_labels` (instance label images as 2-D uint32).
- `nucseg.io.sample`: `sample_paths` (the H&E tile and ground truth shipped with the package).
- `nucseg.io.export`: labels, GeoJSON and measurements out.

The submodules are imported on demand so that ``import nucseg.io`` stays cheap.
"""
