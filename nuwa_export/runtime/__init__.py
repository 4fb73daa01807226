"""Run an export directory: backends (ort, trt) behind one interface, and the pipeline over them."""
