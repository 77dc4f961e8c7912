"""The Predictor and what it is made of: calibration, the gallery with its index, the saved folder,
and adding a folder of images to a saved gallery. Builds on the layers below (core to transfer)."""
