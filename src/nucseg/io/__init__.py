"""Reading and writing images, slides and label maps.

- `nucseg.io.slides`: `open_slide` (SVS, OME-TIFF, TIFF, NDPI, MRXS, SCN, BIF, Philips TIFF, DICOM WSI, PNG, JPEG
  as a lazy pyramid with microns per pixel; the reader is picked by content), `read_image` (a whole tile),
  `list_images` (a folder of inputs; a DICOM folder is one), `is_supported`, `require_brightfield`.
- `nucseg.io.base`: the `Slide` interface, the read errors and the one RGB rule (`as_rgb_uint8`) that the
  readers share (`_tiff` tifffile, `_openslide`, `_dicom` wsidicom; `_color` ICC and brightfield / fluorescence).
- `nucseg.io.limits`: what the readers refuse before decoding (images too large to read whole, strips or tiles too
  large to decode, levels declaring more pixels than any slide).
- `nucseg.io.masks`: `read_labels` (instance label images as 2-D uint32); `nucseg.io.label_files`: tell label
  files from images and open them lazily with their pixel size (the napari reader).
- `nucseg.io.names`: the one stem rule (`plain_stem` names outputs, `pair_stem` pairs images, labels and maps).
- `nucseg.io.sample`: `sample_paths` (the H&E tile and ground truth shipped with the package).
- `nucseg.io.export`: labels, GeoJSON and measurements out.

The submodules are imported on demand so that ``import nucseg.io`` stays cheap.
"""
