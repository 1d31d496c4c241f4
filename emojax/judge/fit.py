"""L2-regularised softmax regression on hashed sparse features, fitted with optax L-BFGS.

The loss and its gradient are two sparse products. XLA's CPU scatter is slow for millions of
non-zeros, so they run in scipy (a dependency of jax itself) through `jax.pure_callback`, with a
custom VJP that hands the host-computed gradient to optax; the optimiser and its line search stay
in JAX.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse

from emojax.judge.features import SparseRows


def to_csr(rows: SparseRows, n_buckets: int) -> scipy.sparse.csr_matrix:
    return scipy.sparse.csr_matrix((rows.values, rows.indices, rows.offsets),
                                   shape=(rows.n_rows, n_buckets))


def fit_softmax_regression(
    rows: SparseRows,
    labels: Sequence[int] | np.ndarray,
    *,
    n_classes: int,
    n_buckets: int,
    l2: float,
    sample_weight: np.ndarray | None = None,
    max_steps: int = 200,
    grad_tol: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise weighted mean cross-entropy + l2 * ||W||^2; returns W [n_buckets, C], b [C]."""
    labels = np.asarray(labels, np.int64)
    if labels.shape != (rows.n_rows,):
        raise ValueError(f"labels has shape {labels.shape}, expected ({rows.n_rows},)")
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got {labels.min()}..{labels.max()}")
    weight = np.ones(rows.n_rows) if sample_weight is None else np.asarray(sample_weight, float)
    weight = weight / weight.sum()
    x = to_csr(rows, n_buckets).astype(np.float64)
    # A CSC view of X makes X @ W several times faster than the CSR product in scipy.
    x_csc, x_t = x.tocsc(), x.T.tocsr()
    onehot = np.eye(n_classes)[labels]

    def host_value_and_grad(w: np.ndarray, b: np.ndarray):
        w = np.asarray(w, np.float64)
        logits = x_csc @ w + np.asarray(b, np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1, keepdims=True))
        log_prob = logits - log_norm
        value = -(weight * (onehot * log_prob).sum(axis=1)).sum() + l2 * np.sum(w * w)
        residual = (np.exp(log_prob) - onehot) * weight[:, None]
        grad_w = x_t @ residual + 2.0 * l2 * w
        return (np.float32(value), grad_w.astype(np.float32),
                residual.sum(axis=0).astype(np.float32))

    shapes = (jax.ShapeDtypeStruct((), jnp.float32),
              jax.ShapeDtypeStruct((n_buckets, n_classes), jnp.float32),
              jax.ShapeDtypeStruct((n_classes,), jnp.float32))

    @jax.custom_vjp
    def loss(params):
        return jax.pure_callback(host_value_and_grad, shapes, params["w"], params["b"])[0]

    def loss_fwd(params):
        value, grad_w, grad_b = jax.pure_callback(host_value_and_grad, shapes,
                                                  params["w"], params["b"])
        return value, (grad_w, grad_b)

    def loss_bwd(residuals, cotangent):
        return ({"w": cotangent * residuals[0], "b": cotangent * residuals[1]},)

    loss.defvjp(loss_fwd, loss_bwd)

    optimizer = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def step(params, state):
        value, grad = value_and_grad(params, state=state)
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad,
                                          value_fn=loss)
        return optax.apply_updates(params, updates), state, optax.tree.norm(grad)

    params = {"w": jnp.zeros((n_buckets, n_classes), jnp.float32),
              "b": jnp.zeros((n_classes,), jnp.float32)}
    state = optimizer.init(params)
    for _ in range(max_steps):
        params, state, grad_norm = step(params, state)
        if float(grad_norm) < grad_tol:
            break
    return np.asarray(params["w"]), np.asarray(params["b"])


def fit_logistic(features: np.ndarray, labels: np.ndarray, *, l2: float, steps: int = 50,
                 tol: float = 1e-10) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (mean log-loss + l2 * ||w||^2, bias unpenalised) by Newton's method.

    A handful of dense features (the fluency rule): exact, deterministic and instant. Returns (w [d], b).
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"fit_logistic: features {x.shape} and labels {y.shape} do not pair up")
    if not np.isfinite(x).all():
        raise ValueError("fit_logistic: features must be finite")
    if not set(np.unique(y).tolist()) <= {0.0, 1.0}:
        raise ValueError("fit_logistic: labels must be 0 or 1")
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    penalty = np.full(d + 1, 2.0 * l2)
    penalty[-1] = 0.0
    theta = np.zeros(d + 1)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        grad = design.T @ (p - y) / n + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design / n + np.diag(penalty) + 1e-12 * np.eye(d + 1)
        step = np.linalg.solve(hessian, grad)
        theta -= step
        if float(np.abs(step).max()) < tol:
            break
    return theta[:d], float(theta[d])


def lda_from_moments(second_moment: np.ndarray, class_sums: np.ndarray, class_weights: np.ndarray, *,
                     shrinkage: float, prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Linear discriminant analysis from weighted moments: W [d, C], b [C] with log-probs = log_softmax(x W + b).

    second_moment = sum_i w_i x_i x_i^T [d, d]; class_sums[c] = sum_{i in c} w_i x_i [C, d]; class_weights[c] =
    sum_{i in c} w_i. The pooled within-class covariance is shrunk towards its diagonal by `shrinkage` (0..1),
    so thousands of correlated reader dimensions give a well-posed, closed-form, deterministic fit. `prior` [C]
    replaces the training share of each class in the bias (None: the training shares).
    """
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"lda_from_moments: shrinkage must lie in [0, 1], got {shrinkage}")
    present = class_weights > 0
    total = float(class_weights.sum())
    means = np.where(present[:, None], class_sums / np.maximum(class_weights, 1e-300)[:, None], 0.0)
    between = (class_sums[present].T @ means[present])
    covariance = (second_moment - between) / total
    covariance = (1.0 - shrinkage) * covariance + shrinkage * np.diag(np.diag(covariance))
    covariance += 1e-9 * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    weights = np.linalg.solve(covariance, means.T)  # [d, C]
    share = class_weights / total if prior is None else np.asarray(prior, np.float64) / np.sum(prior)
    bias = -0.5 * np.einsum("dc,cd->c", weights, means) + np.log(np.maximum(share, 1e-300))
    bias[~present] = -1e9  # a class never seen in training is never predicted
    weights[:, ~present] = 0.0
    return weights, bias


def weighted_moments(features: np.ndarray, labels: np.ndarray, weight: np.ndarray, n_classes: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sum w x x^T, per-class sum w x, per-class sum w) of float64 features: what lda_from_moments takes."""
    x = np.asarray(features, np.float64)
    w = np.asarray(weight, np.float64)
    onehot = np.eye(n_classes)[np.asarray(labels, np.int64)] * w[:, None]
    return (x * w[:, None]).T @ x, onehot.T @ x, onehot.sum(axis=0)
