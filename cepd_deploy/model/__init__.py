"""The CEPD model: the ``CEPDConv2d`` layer (layers), the model file (format) and the zoo of
randomly initialised CNNs (zoo)."""
