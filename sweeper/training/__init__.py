"""One training run: the config, the data, the batches on the device, the loop, the models."""
