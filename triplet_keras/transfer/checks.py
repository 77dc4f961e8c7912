"""Input checks shared by the fitted estimators of the package."""
import numpy as np
from sklearn.utils.validation import check_array, check_is_fitted


def check_queries(estimator, X, fitted):
    """X as a float64 2-d array with the feature count ``estimator`` was fitted on (``fitted``: an
    attribute that exists once fitted); NotFittedError before fit, ValueError on another width."""
    check_is_fitted(estimator, fitted)
    X = check_array(X, dtype=np.float64)
    if X.shape[1] != estimator.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, but {type(estimator).__name__} "
                         f"is expecting {estimator.n_features_in_} features as input")
    return X
