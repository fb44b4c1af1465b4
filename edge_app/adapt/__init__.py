"""`hemato adapt`: refit a model's dense head on a laboratory's own reviewed cells, on the device (numpy, TFLite)."""
