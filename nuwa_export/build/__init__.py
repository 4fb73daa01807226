"""TensorRT engine building. TensorRT is imported lazily: nothing here is needed to export or run ORT."""
