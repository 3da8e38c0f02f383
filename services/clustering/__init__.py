"""Subcategory discovery (the paper's section 3): intrinsic dimension, autoencoder, hierarchical
clusterings and their NMI scores. Estimators follow scikit-learn's API: parameters in
``__init__``, ``fit``/``transform``/``fit_predict``, results in attributes ending in ``_``."""
