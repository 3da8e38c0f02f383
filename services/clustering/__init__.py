"""Subcategory discovery (the paper's section 3): intrinsic dimension, autoencoder, hierarchical
clusterings and their NMI scores. Estimators follow scikit-learn's API (they subclass
``BaseEstimator``, so ``get_params``/``set_params``/``clone`` work): ``__init__`` only stores its
parameters, ``fit(X, y=None)`` validates and returns the estimator, results live in attributes
ending in ``_`` (``labels_`` of the clusterers, ``dimension_`` of :class:`TwoNN`), bad input
raises :class:`ValueError`. The clusterers' fitted hierarchies can be cut at any k with
``labels_at(k)``."""
