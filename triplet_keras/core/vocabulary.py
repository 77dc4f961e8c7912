"""The transfer's names, defined once for the package (the training strategies have theirs in
triplet_keras.core.strategies): the kinds of features the transfer works on (models.feature_encoder builds
them) and its modes (transfer.TransferClassifier fits them; choice searches all but ``calibrate``)."""
TRANSFER_FEATURES = ("embedding", "backbone", "grid")
TRANSFER_MODES = ("none", "translate", "center", "calibrate")
