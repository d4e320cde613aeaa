"""The baseline beside the finetuned GPTs: logistic regression on bag-of-words, in NumPy.

    .venv/bin/python benchmarks/sms_logreg_baseline.py

The book's IMDb table (ch06/03_bonus_imdb-classification) puts a logistic regression on word counts
beside the transformers (scikit-learn's ``CountVectorizer`` + ``LogisticRegression`` defaults). This
is the same model written out in NumPy, on the book's SMS splits (1,045 / 149 / 300 texts,
``minigpt.training.classification_data.book_sms_spam``'s rows):

- features: ``CountVectorizer``'s defaults: lowercase, tokens of 2+ word characters
  (``\\b\\w\\w+\\b``), counts, the vocabulary of the training split;
- model: p(spam) = sigmoid(x w + b), trained on the training split by minimising scikit-learn's
  objective with its default C = 1: sum of log-losses + ||w||^2 / 2 (b not penalised), by
  accelerated gradient descent (Nesterov, step 1 / L with L the gradient's Lipschitz constant) until
  the gradient norm is below 1e-6 of its start;
- accuracy on each split, and the time.
"""
from __future__ import annotations

import re
import time

import numpy as np

from minigpt.training.classification_data import create_balanced_dataset, load_sms_spam, random_split

TOKEN = re.compile(r"(?u)\b\w\w+\b")


def vectorize(texts: list[str], vocab: dict[str, int] | None = None):
    """Word counts (N, V) float64; the vocabulary is built from ``texts`` when not given."""
    docs = [TOKEN.findall(t.lower()) for t in texts]
    if vocab is None:
        vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
    X = np.zeros((len(texts), len(vocab)))
    for n, d in enumerate(docs):
        for w in d:
            if w in vocab:
                X[n, vocab[w]] += 1
    return X, vocab


def fit(X: np.ndarray, y: np.ndarray, C: float = 1.0, tol: float = 1e-6, max_iter: int = 20000):
    """Minimise C * sum(logloss) + ||w||^2 / 2 over (w, b). Returns (w, b, iterations)."""
    N, V = X.shape
    Xb = np.hstack([X, np.ones((N, 1))])                                   # (N, V + 1)
    reg = np.ones(V + 1)
    reg[-1] = 0.0                                                          # no penalty on b

    def grad(theta):
        p = 1 / (1 + np.exp(-(Xb @ theta)))                                # (N,)
        return C * (Xb.T @ (p - y)) + reg * theta                          # (V + 1,)

    L = C * 0.25 * np.linalg.norm(Xb, 2) ** 2 + 1.0                       # Lipschitz constant
    theta = np.zeros(V + 1)
    z, t = theta.copy(), 1.0
    g0 = np.linalg.norm(grad(theta))
    for it in range(1, max_iter + 1):
        new = z - grad(z) / L
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        z = new + (t - 1) / t_new * (new - theta)
        theta, t = new, t_new
        if it % 50 == 0 and np.linalg.norm(grad(theta)) < tol * g0:
            break
    return theta[:-1], theta[-1], it


def main() -> int:
    t0 = time.perf_counter()
    train, val, test = random_split(create_balanced_dataset(load_sms_spam()), 0.7, 0.1)
    Xtr, vocab = vectorize(train.texts)
    w, b, iters = fit(Xtr, train.labels.astype(np.float64))
    print(f"bag of words: {len(vocab):,} words from {len(train):,} training texts; "
          f"logistic regression, C = 1, {iters} iterations")
    for name, part in (("train", train), ("val", val), ("test", test)):
        X, _ = vectorize(part.texts, vocab)
        acc = float(np.mean(((X @ w + b) > 0) == (part.labels == 1)))
        print(f"{name} accuracy: {acc * 100:.2f}%")
    print(f"time: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
