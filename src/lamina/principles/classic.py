"""The pipeline before deep learning: features engineered by hand, then a linear classifier.

A person decides what the classifier should look at. Histograms of oriented gradients (HOG, Dalal &
Triggs 2005; scikit-image) describe each small cell of the image by the directions of its edges,
normalised over blocks of cells; optionally a bag of visual words (Csurka et al. 2004) adds how often
each of K typical patches (k-means centres of patches from the training images) occurs. Only the
last stage learns: a linear SVM (scikit-learn's LinearSVC) on those fixed features. A CNN learns the
features too, from the raw pixels, with the same error signal that trains its classifier.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

HOG = {"orientations": 9, "pixels_per_cell": (4, 4), "cells_per_block": (2, 2), "block_norm": "L2-Hys"}
PATCH, STRIDE = 7, 3  # bag of visual words: 7x7 patches every 3 pixels


def _hog_chunk(images: np.ndarray) -> np.ndarray:
    from skimage.feature import hog

    return np.stack([hog(im, **HOG) for im in images]).astype(np.float32)


def hog_features(images: np.ndarray, workers: int | None = None) -> np.ndarray:
    """(N, H, W) uint8 -> (N, D) HOG descriptors, computed in parallel over the cores."""
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers == 1 or len(images) < 2000:
        return _hog_chunk(images)
    chunks = np.array_split(images, workers * 4)
    # Spawned, not forked: the parent has torch loaded, whose threads a fork copies half-made.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return np.concatenate(list(pool.map(_hog_chunk, chunks)))


def patches(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N, P, PATCH*PATCH) float patches, each with its mean removed and its norm scaled to 1."""
    from numpy.lib.stride_tricks import sliding_window_view

    windows = sliding_window_view(images.astype(np.float32) / 255, (PATCH, PATCH), axis=(1, 2))[:, ::STRIDE, ::STRIDE]
    p = windows.reshape(len(images), -1, PATCH * PATCH)
    p = p - p.mean(axis=2, keepdims=True)
    return p / (np.linalg.norm(p, axis=2, keepdims=True) + 0.1)  # + 0.1: flat patches stay near zero


class VisualWords:
    """K patch centres (k-means on training patches); an image is the histogram of its patches' nearest centres."""

    def __init__(self, words: int = 128, seed: int = 0):
        self.words, self.seed = words, seed

    def fit(self, images: np.ndarray, sample: int = 100_000) -> VisualWords:
        from sklearn.cluster import MiniBatchKMeans

        p = patches(images).reshape(-1, PATCH * PATCH)
        rng = np.random.default_rng(self.seed)
        p = p[rng.choice(len(p), min(sample, len(p)), replace=False)]
        self.kmeans = MiniBatchKMeans(self.words, random_state=self.seed, batch_size=4096, n_init=3).fit(p)
        return self

    def transform(self, images: np.ndarray, batch: int = 2000) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch):
            p = patches(images[i : i + batch])
            nearest = self.kmeans.predict(p.reshape(-1, PATCH * PATCH)).reshape(len(p), -1)
            hist = np.stack([np.bincount(row, minlength=self.words) for row in nearest]).astype(np.float32)
            out.append(np.sqrt(hist / hist.sum(axis=1, keepdims=True)))  # Hellinger: square roots of frequencies
        return np.concatenate(out)


def classic(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    features: str = "hog",
    C: float = 0.05,
    seed: int = 0,
) -> dict:
    """Engineered features and a linear SVM; test accuracy and where the time went."""
    from sklearn.svm import LinearSVC

    if features not in ("hog", "hog+bovw"):
        from lamina.errors import UsageError

        raise UsageError(f"unknown features {features!r}; choose from: hog, hog+bovw")
    seconds = {}
    t = time.perf_counter()
    f_train, f_test = hog_features(x_train), hog_features(x_test)
    seconds["hog"] = time.perf_counter() - t
    if features == "hog+bovw":
        t = time.perf_counter()
        words = VisualWords(seed=seed).fit(x_train)
        f_train = np.hstack([f_train, words.transform(x_train)])
        f_test = np.hstack([f_test, words.transform(x_test)])
        seconds["bovw"] = time.perf_counter() - t
    # HOG blocks are normalised already: standardising the features as well made the SVM 10-80x slower to
    # fit here, and 3-5 points less accurate. The primal solver (dual=False) suits many more images than features.
    t = time.perf_counter()
    svm = LinearSVC(C=C, dual=False, random_state=seed, max_iter=1000, tol=1e-3).fit(f_train, y_train)
    seconds["svm"] = time.perf_counter() - t
    predicted = svm.predict(f_test)
    return {
        "features": features,
        "dimensions": int(f_train.shape[1]),
        "classifier": f"LinearSVC(C={C})",
        "train": len(y_train),
        "test": len(y_test),
        "test_accuracy": float((predicted == y_test).mean()),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def explain(features: str = "hog", limit: int = 0, C: float = 0.05, seed: int = 0) -> dict:
    """`lamina explain classic`: HOG (and visual words) + a linear SVM on Fashion-MNIST, timed whole."""
    from lamina.data.images import fashion_mnist
    from lamina.errors import UsageError

    if C <= 0 or limit < 0 or 0 < limit < 100:
        raise UsageError("--C must be positive, and --limit 0 (every image) or at least 100")
    started = time.perf_counter()
    train_set, test_set = fashion_mnist("train"), fashion_mnist("test")
    x, y = train_set.images[:, 0].numpy(), train_set.labels.numpy()
    x_test, y_test = test_set.images[:, 0].numpy(), test_set.labels.numpy()
    if limit:
        x, y, x_test, y_test = x[:limit], y[:limit], x_test[:limit], y_test[:limit]
    result = classic(x, y, x_test, y_test, features, C, seed)
    result["seconds"]["total"] = round(time.perf_counter() - started, 1)
    return result
