"""The saved state of a fitted classifier: a JSON-able config and a dict of numpy arrays, no pickle.

config = {"type": class name, "version": STATE_VERSION, "params": get_params(), the class's
``_state_fields``}; arrays = the class's ``_state_arrays``. Labels must be numbers or strings, so the
arrays load with ``allow_pickle=False``. Older versions load: version 1 (before whitening) gets no
whitening; versions 1-2 take ``whiten_`` from the ``whiten`` param; versions 1-3 (when the classifier
chose its own mode) keep the mode and whitening they fitted as fixed parameters and drop the record of
that choice (now triplet_keras.transfer.choice's).
"""
import numpy as np
from sklearn.utils.validation import check_is_fitted

STATE_VERSION = 4


class Serializable:
    """get_state / from_state for an estimator naming ``_state_arrays`` (fitted arrays) and
    ``_state_fields`` (fitted JSON-able values); ``means_`` gives n_features_in_ back."""
    _state_arrays = ()
    _state_fields = ()

    def get_state(self):
        """(config, arrays): a JSON-able dict and a dict of numpy arrays that rebuild the fitted model."""
        check_is_fitted(self, list(self._state_arrays))
        config = {"type": type(self).__name__, "version": STATE_VERSION, "params": self.get_params()}
        config.update({name: getattr(self, name) for name in self._state_fields})
        arrays = {name: np.asarray(getattr(self, name)) for name in self._state_arrays}
        return config, arrays

    @classmethod
    def from_state(cls, config, arrays):
        """Inverse of get_state (no pickle anywhere: labels are numbers or strings)."""
        if config.get("type") != cls.__name__:
            raise ValueError(f"state is for {config.get('type')!r}, not {cls.__name__}")
        config, arrays = upgrade_state(config, arrays)
        model = cls(**config["params"])
        model._check_params()
        for name in model._state_arrays:
            if name not in arrays:
                raise ValueError(f"state of {cls.__name__} lacks the array {name!r}")
            setattr(model, name, np.asarray(arrays[name]))
        if model.classes_.dtype == object:
            raise ValueError("class labels must be numbers or strings")
        for name in model._state_fields:
            setattr(model, name, config[name])
        model.n_features_in_ = model.means_.shape[1]
        return model


def upgrade_state(config, arrays):
    """A TransferClassifier state of an older version in the terms of the current one."""
    if config["type"] != "TransferClassifier":
        return config, arrays
    if config.get("version") == 1:
        dim = np.shape(arrays.get("means_"))[-1]
        config = {**config, "params": {**config["params"], "whiten": None}}
        arrays = {"source_center_": np.zeros(dim), "whitening_": np.zeros((0, 0)), "source_offset_": np.zeros(dim),
                  **arrays}
    config = {"whiten_": config["params"].get("whiten"), **config}
    params = {key: value for key, value in config["params"].items() if key not in ("selection_episodes", "source_scores")}
    mode, whiten = str(config["mode_"]), config["whiten_"]
    whiten = None if mode == "none" or whiten == "auto" else whiten
    params.update(mode=mode, whiten=whiten)
    config = {key: value for key, value in config.items() if key not in ("selection_", "support_selection_")}
    return {**config, "params": params, "mode_": mode, "whiten_": whiten,
            "normalize_": bool(config["normalize_"])}, arrays
