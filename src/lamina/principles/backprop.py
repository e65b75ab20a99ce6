"""Back-propagation by hand: a multi-layer perceptron in NumPy, with no autograd anywhere.

Each layer's units compute a weighted sum of their inputs plus a bias, z = a W + b, followed by a
non-linearity, a = relu(z); the last layer's sums are the class scores, turned into probabilities by
the softmax. The loss is the cross-entropy between those probabilities and the true class.

The backward pass is the chain rule, applied layer by layer from the loss back to the input:

    the error signal at the output    delta_L = dLoss/dz_L = (softmax(z_L) - onehot(y)) / batch
    the gradient of a layer's weights dW_l = a_(l-1)^T delta_l,  db_l = sum over the batch of delta_l
    the error signal one layer down   delta_(l-1) = (delta_l W_l^T) * relu'(z_(l-1))

so every parameter's gradient is the error signal arriving at its unit times the input that unit saw.
`gradient_check` compares these gradients with PyTorch's autograd on the same weights and batch; the
training loop is plain SGD with momentum, and prints the gradient norm of every layer as it goes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Layer:
    W: np.ndarray  # (inputs, units)
    b: np.ndarray  # (units,)


class NumpyMLP:
    def __init__(self, sizes: list[int], seed: int = 0, dtype=np.float32):
        """sizes: [inputs, hidden..., classes]. He initialisation, as for ReLU units."""
        rng = np.random.default_rng(seed)
        self.layers = [
            Layer((rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(dtype), np.zeros(n_out, dtype))
            for n_in, n_out in zip(sizes[:-1], sizes[1:])
        ]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """Class scores (B, K), and per layer (its input a, its weighted sums z) for the backward pass."""
        cache = []
        a = x
        for i, layer in enumerate(self.layers):
            z = a @ layer.W + layer.b  # the weighted sum of every unit
            cache.append((a, z))
            a = np.maximum(z, 0) if i < len(self.layers) - 1 else z  # the non-linearity (none on the scores)
        return a, cache

    @staticmethod
    def loss(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean softmax cross-entropy, and its gradient with respect to the scores: the output error signal."""
        shifted = scores - scores.max(axis=1, keepdims=True)  # the same softmax, without overflow
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        n = len(y)
        loss = -log_p[np.arange(n), y].mean()
        delta = np.exp(log_p)
        delta[np.arange(n), y] -= 1
        return float(loss), delta / n

    def backward(self, delta: np.ndarray, cache) -> list[Layer]:
        """The gradients of every layer, from the output error signal `delta` back to the first layer."""
        grads: list[Layer] = []
        for i in reversed(range(len(self.layers))):
            a, _ = cache[i]
            grads.append(Layer(a.T @ delta, delta.sum(axis=0)))
            if i > 0:
                z_below = cache[i - 1][1]
                delta = (delta @ self.layers[i].W.T) * (z_below > 0)  # through the weights, then relu'
        return grads[::-1]

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[Layer]]:
        scores, cache = self.forward(x)
        loss, delta = self.loss(scores, y)
        return loss, self.backward(delta, cache)


def gradient_check(model: NumpyMLP, x: np.ndarray, y: np.ndarray) -> float:
    """The largest difference between the hand-written gradients and torch.autograd's, on the same
    weights and batch (in float64, so the difference is the method's and not rounding's)."""
    import torch

    loss, grads = model.gradients(x.astype(np.float64), y)
    params = [
        (torch.tensor(layer.W, dtype=torch.float64, requires_grad=True),
         torch.tensor(layer.b, dtype=torch.float64, requires_grad=True))
        for layer in model.layers
    ]  # fmt: skip
    a = torch.tensor(x, dtype=torch.float64)
    for i, (W, b) in enumerate(params):
        a = a @ W + b
        a = torch.relu(a) if i < len(params) - 1 else a
    reference = torch.nn.functional.cross_entropy(a, torch.tensor(y, dtype=torch.long))
    reference.backward()
    worst = abs(loss - reference.item())
    for g, (W, b) in zip(grads, params):
        worst = max(worst, np.abs(g.W - W.grad.numpy()).max(), np.abs(g.b - b.grad.numpy()).max())
    return float(worst)


def accuracy(model: NumpyMLP, x: np.ndarray, y: np.ndarray, batch: int = 2048) -> float:
    right = sum(
        int((model.forward(x[i : i + batch])[0].argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch)
    )
    return right / len(y)


def train(
    model: NumpyMLP,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.9,
    seed: int = 0,
    on_epoch=None,
) -> list[dict]:
    """SGD with momentum: every step, the gradients of every layer from `backward`, then each weight
    moves against its gradient. Returns per epoch the mean loss and each layer's mean gradient norm."""
    rng = np.random.default_rng(seed)
    velocity = [Layer(np.zeros_like(layer.W), np.zeros_like(layer.b)) for layer in model.layers]
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(y))
        losses, norms = [], np.zeros(len(model.layers))
        steps = 0
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            loss, grads = model.gradients(x[idx], y[idx])
            for layer, g, v in zip(model.layers, grads, velocity):
                v.W *= momentum
                v.W -= lr * g.W
                v.b *= momentum
                v.b -= lr * g.b
                layer.W += v.W
                layer.b += v.b
            losses.append(loss)
            norms += [np.sqrt((g.W**2).sum() + (g.b**2).sum()) for g in grads]
            steps += 1
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "gradient_norms": (norms / steps).tolist()}
        history.append(record)
        if on_epoch:
            on_epoch(record)
    return history


def explain(
    hidden: tuple[int, ...] = (256, 128),
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 0.05,
    limit: int = 0,
    seed: int = 0,
    emit=None,
) -> dict:
    """`lamina explain backprop`: check the hand-written gradients against autograd, then train the
    NumPy MLP on Fashion-MNIST; per epoch the loss, the test accuracy and every layer's gradient norm."""
    from lamina.data.images import fashion_mnist
    from lamina.errors import UsageError

    if epochs < 1 or batch_size < 1 or lr <= 0 or not hidden or min(hidden) < 1 or limit < 0 or 0 < limit < 100:
        raise UsageError("--epochs, --batch-size, --lr and every --hidden width must be positive, --limit 0 or >= 100")
    train_set, test_set = fashion_mnist("train"), fashion_mnist("test")

    def flat(images) -> np.ndarray:
        return images.reshape(len(images), -1).numpy().astype(np.float32) / 255

    x, y = flat(train_set.images), train_set.labels.numpy()
    x_test, y_test = flat(test_set.images), test_set.labels.numpy()
    if limit:
        x, y, x_test, y_test = x[:limit], y[:limit], x_test[:limit], y_test[:limit]
    sizes = [x.shape[1], *hidden, 10]
    started = time.perf_counter()
    check = gradient_check(NumpyMLP(sizes, seed=seed, dtype=np.float64), x[:16], y[:16])
    model = NumpyMLP(sizes, seed=seed)

    def on_epoch(record: dict) -> None:
        record["test_accuracy"] = accuracy(model, x_test, y_test)
        if emit:
            emit(record)

    history = train(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, on_epoch=on_epoch)
    return {
        "layers": sizes,
        "gradient_check": check,
        "epochs": history,
        "test_accuracy": history[-1]["test_accuracy"],
        "train": len(y),
        "test": len(y_test),
        "seconds": round(time.perf_counter() - started, 1),
    }
