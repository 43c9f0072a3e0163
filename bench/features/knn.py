"""Frozen-feature quality checks: weighted cosine kNN and a standardised linear probe."""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07,
                 chunk: int = 1024) -> float:
    """Top-1 accuracy of a cosine kNN classifier with exp(sim / T)-weighted votes (DINO's protocol).

    Features are (N, D) (flattened if not); labels (N,) long. Ties in the vote go to the lower
    class id, so the result is deterministic.
    """
    train = F.normalize(torch.as_tensor(train_feats).flatten(1).double(), dim=1)
    test = F.normalize(torch.as_tensor(test_feats).flatten(1).double(), dim=1)
    ytr, yte = torch.as_tensor(train_labels).long(), torch.as_tensor(test_labels).long()
    num_classes = int(max(ytr.max(), yte.max())) + 1
    k = min(k, len(train))
    correct = 0
    for i in range(0, len(test), chunk):  # chunked: a (10k, 50k) similarity matrix is 4 GB
        sim, idx = (test[i:i + chunk] @ train.t()).topk(k, dim=1)  # (b, k)
        votes = torch.zeros(len(sim), num_classes, dtype=torch.float64)
        votes.scatter_add_(1, ytr[idx], (sim / temperature).exp())
        correct += int((votes.argmax(1) == yte[i:i + chunk]).sum())
    return correct / len(test)


def linear_probe_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                          test_labels: torch.Tensor, max_iter: int = 200, C: float = 1.0) -> float:
    """Test accuracy of multinomial logistic regression on features standardised with train statistics."""
    from sklearn.exceptions import ConvergenceWarning  # sklearn is slow to import; only here
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr = np.asarray(torch.as_tensor(train_feats).flatten(1), dtype=np.float64)
    xte = np.asarray(torch.as_tensor(test_feats).flatten(1), dtype=np.float64)
    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(C=C, max_iter=max_iter)  # lbfgs; max_iter bounds the CPU time
    with warnings.catch_warnings():  # hitting the bound is the intended budget, not an error
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(xtr), np.asarray(train_labels))
    return float((clf.predict(scaler.transform(xte)) == np.asarray(test_labels)).mean())
