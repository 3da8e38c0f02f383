"""Classifier evaluation from logits: accuracy, confusion matrix, per-class P/R/F1, calibration.

Temperature scaling (Guo et al. 2017) divides the logits by one scalar T fitted on the
validation set by minimising the negative log-likelihood; the expected calibration error (ECE,
equal-width confidence bins) is reported before and after.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    if logits.shape[0] == 0:
        raise ValueError("no samples to evaluate")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinity")
    return logits, labels


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    logits, labels = _check(logits, labels)
    lp = log_softmax(logits / temperature, axis=1)
    return float(-lp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises validation NLL of softmax(logits / T)."""
    logits, labels = _check(logits, labels)
    res = minimize_scalar(lambda lt: nll(logits, labels, math.exp(lt)), bounds=(math.log(0.05), math.log(20.0)),
                          method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels)
    conf = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)


def confusion(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    m = np.zeros((classes, classes), np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(predicted)), 1)
    return m


def classification_report(logits: np.ndarray, labels: np.ndarray, class_names: list[str],
                          temperature: float = 1.0) -> dict:
    """Accuracy, confusion matrix (rows = truth), per-class precision/recall/F1/support, macro-F1, ECE."""
    logits, labels = _check(logits, labels)
    k = len(class_names)
    pred = logits.argmax(axis=1)
    cm = confusion(labels, pred, k)
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = cm.sum(1) > 0
    probs = softmax(logits / temperature, axis=1)
    return {
        "n": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "nll": nll(logits, labels, temperature),
        "ece": ece(probs, labels),
        "confusion_matrix": cm.tolist(),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(cm[i].sum())} for i, name in enumerate(class_names)},
    }
