"""Prototype optimizers for the learner's default: small per-sample logistic-regression learners on a
dict of weights, written for exactness, not speed (a later change ports the winner to the compiled kernel).

Every learner here follows one interface: ``predict_proba(x) -> float`` (P(y = 1 | x)) and
``learn(x, y)`` with ``x`` a dict of finite floats (strings one-hot encoded before, ``{"k=v": 1.0}``) and
``y`` a bool. Notation for one event: ``z = b + Σ_i w_i x_i``, ``p = σ(z)``, the log-loss gradient
``g_i = (p − y) x_i`` for each coordinate present in ``x`` and ``g_b = p − y`` for the bias, which every
learner treats as one more coordinate whose value is always 1 (so the bias has the same update as the
weights, with its own state). Coordinates absent from ``x`` have ``g_i = 0`` and are not touched (lazy,
sparse updates; what the compiled kernel does).

Costs are per event, with ``d`` the number of features present: one sparse dot product of length
``d + 1`` for a single learner, ``K`` of them for a mixture of ``K`` members (the feature lookup is
shared). None of them touches coordinates absent from ``x``.

>>> m = Mixture()
>>> round(m.predict_proba({"a": 1.0}), 3)
0.5
>>> for _ in range(50):
...     m.learn({"a": 1.0}, True)
>>> m.predict_proba({"a": 1.0}) > 0.9
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

BIAS = "\0bias"  # the bias's coordinate: a key no feature dict can hold
Z_MAX = 35.0  # |z| beyond this gives p within 1e-15 of 0 or 1; clipping keeps exp() finite


def sigmoid(z: float) -> float:
    """σ(z) = 1/(1 + e^−z), without overflow for any finite z (z is clipped to ±35 first)."""
    z = max(-Z_MAX, min(Z_MAX, z))
    return 1.0 / (1.0 + math.exp(-z))


def dot(w: dict, x: dict) -> float:
    """b + Σ_i w_i x_i over the coordinates of x (absent weights are 0)."""
    return w.get(BIAS, 0.0) + sum(w.get(k, 0.0) * v for k, v in x.items())


def coords(x: dict) -> list[tuple[str, float]]:
    """The (coordinate, value) pairs an update touches: the features of x, then the bias with value 1."""
    return [*x.items(), (BIAS, 1.0)]


class SGD:
    """Plain SGD at a constant rate η (bias included, at the same rate):

        w_i ← w_i − η g_i

    With ``intercept_lr=0.01`` and η = 0.01 it is River's ``LogisticRegression()`` (whose bias uses
    ``intercept_lr`` = 0.01 whatever η is); by default the bias uses η too.
    """

    def __init__(self, lr: float = 0.01, intercept_lr: float | None = None) -> None:
        self.lr = lr
        self.intercept_lr = lr if intercept_lr is None else intercept_lr
        self.w: dict = {}

    def predict_proba(self, x: dict) -> float:
        return sigmoid(dot(self.w, x))

    def learn(self, x: dict, y: bool, p: float | None = None) -> None:
        r = (self.predict_proba(x) if p is None else p) - y
        w = self.w
        for k, v in x.items():
            w[k] = w.get(k, 0.0) - self.lr * r * v
        w[BIAS] = w.get(BIAS, 0.0) - self.intercept_lr * r


class AdaGradFloor:
    """Per-coordinate AdaGrad (Duchi, Hazan & Singer 2011) with an optional discount, an optional cap on
    the first steps and a floor under the rate:

        G_i ← γ G_i + g_i²
        η_i = max(α / (β + √(G_i + ε)), η_min)     (ε = 1e-8)
        w_i ← w_i − η_i g_i

    With γ = 1, β = η_min = 0 it is AdaGrad. With γ = 1, η_min = 0 and β > 0 it is FTRL-Proximal(α, β)
    without L1/L2 (McMahan et al. 2013, "Ad click prediction", §3.1: with λ1 = 0 FTRL-Proximal gives the
    same weights as gradient descent with the per-coordinate rate α/(β + √n_i), n_i including the
    current g_i²), so ``AdaGradFloor(0.17, 0.0, beta=0.5)`` is the current default
    ``optim.FTRL(0.17, 0.5)`` (up to ε). The floor keeps a constant-rate tail so a coordinate that has
    seen many gradients still tracks drift (the failure of FTRL's α/(β + √n), see issue 10). With γ < 1
    the accumulator is discounted (RMSProp, Tieleman & Hinton 2012, without its (1 − γ) factor on g²,
    which keeps the AdaGrad scale early on): G_i forgets with horizon 1/(1 − γ) gradients, so in steady
    state η_i ≈ α √(1 − γ) / rms(g_i) instead of decaying like 1/√t. State: w_i, G_i.
    """

    def __init__(
        self, alpha: float = 0.5, floor: float = 0.01, beta: float = 0.0, gamma: float = 1.0
    ) -> None:
        self.alpha = alpha
        self.floor = floor
        self.beta = beta
        self.gamma = gamma
        self.w: dict = {}
        self.G: dict = {}

    def predict_proba(self, x: dict) -> float:
        return sigmoid(dot(self.w, x))

    def learn(self, x: dict, y: bool, p: float | None = None) -> None:
        r = (self.predict_proba(x) if p is None else p) - y
        w, G = self.w, self.G
        for k, v in coords(x):
            g = r * v
            G[k] = self.gamma * G.get(k, 0.0) + g * g
            eta = max(self.alpha / (self.beta + math.sqrt(G[k] + 1e-8)), self.floor)
            w[k] = w.get(k, 0.0) - eta * g


class NAG:
    """Normalized adaptive gradient (Ross, Mineiro & Langford 2013, "Normalized online learning",
    Algorithm 2 NAG; VW's ``--adaptive --normalized`` without ``--invariant``), rate η:

        for i in x: if |x_i| > s_i: w_i ← w_i (s_i / x_i)²;  s_i ← |x_i|   (s_i = 0 for a new i: w_i = 0)
        p = σ(b + Σ w_i x_i)
        N ← N + Σ_{i in x, x_i ≠ 0} (x_i / s_i)²   (one scalar for the model; t counts events)
        G_i ← G_i + g_i²
        w_i ← w_i − η √(t / N) g_i / (s_i √G_i)

    Scale-invariant per coordinate: multiplying feature i by c leaves predictions unchanged. The bias is
    a coordinate with x = 1 (s = 1). The rescaling happens in ``learn`` (predicting does not change the
    model), so a prediction uses the weights of the scales seen before. State: w_i, s_i, G_i per
    coordinate; t and N per model.
    """

    def __init__(self, lr: float = 0.5) -> None:
        self.lr = lr
        self.w: dict = {}
        self.s: dict = {}
        self.G: dict = {}
        self.t = 0
        self.N = 0.0

    def _rescale(self, x: dict) -> None:
        w, s = self.w, self.s
        for k, v in coords(x):
            a = abs(v)
            if a > s.get(k, 0.0):
                if k in w and s.get(k, 0.0) > 0.0:
                    w[k] *= (s[k] / a) ** 2  # ≤ 1: no overflow for huge finite values
                s[k] = a

    def predict_proba(self, x: dict) -> float:
        return sigmoid(dot(self.w, x))

    def learn(self, x: dict, y: bool, p: float | None = None) -> None:  # p is ignored: rescaling moves it
        self._rescale(x)
        r = self.predict_proba(x) - y  # after the rescaling, as in the paper
        self.t += 1
        w, s, G = self.w, self.s, self.G
        cs = [(k, v) for k, v in coords(x) if v != 0.0]
        self.N += sum((v / s[k]) ** 2 for k, v in cs)
        scale = self.lr * math.sqrt(self.t / self.N) if self.N > 0 else 0.0
        for k, v in cs:
            g = r * v
            G[k] = G.get(k, 0.0) + g * g
            w[k] = w.get(k, 0.0) - scale * g / (s[k] * math.sqrt(G[k]))


class COCOB:
    """Parameter-free coin betting per coordinate: COCOB-Backprop (Orabona & Tommasi 2017, "Training deep
    networks without learning rates through coin betting", Algorithm 2), which is the KT bettor of
    Orabona & Pál 2016 with the gradient bound learnt online (as in VW's ``--coin``), α = 100:

        L_i ← max(L_i, |g_i|);  A_i ← A_i + |g_i|;  θ_i ← θ_i − g_i
        R_i ← max(R_i − g_i (w_i − w0_i), 0)                       (w0_i = 0: the initial weight)
        w_i = w0_i + θ_i / (L_i max(A_i + L_i, α L_i)) · (L_i + R_i)

    No learning rate. State: w_i, L_i, A_i, θ_i, R_i (w_i is a function of the others).
    """

    def __init__(self, alpha: float = 100.0) -> None:
        self.alpha = alpha
        self.w: dict = {}
        self.state: dict = {}  # k -> [L, A, theta, R]

    def predict_proba(self, x: dict) -> float:
        return sigmoid(dot(self.w, x))

    def learn(self, x: dict, y: bool, p: float | None = None) -> None:
        r = (self.predict_proba(x) if p is None else p) - y
        w, state = self.w, self.state
        for k, v in coords(x):
            g = r * v
            if g == 0.0:
                continue
            st = state.setdefault(k, [1e-8, 0.0, 0.0, 0.0])
            st[0] = max(st[0], abs(g))
            st[1] += abs(g)
            st[2] -= g
            st[3] = max(st[3] - g * w.get(k, 0.0), 0.0)
            L = st[0]
            w[k] = st[2] / (L * max(st[1] + L, self.alpha * L)) * (L + st[3])


class Mixture:
    """An online Bayes mixture of K learners (the aggregating algorithm for log loss, Vovk 1990, with
    η = 1, where the substitution function is the mixture itself), optionally with fixed share
    (Herbster & Warmuth 1998) so the weights can move to another member after a drift:

        π_k = π0_k at the start                     (the prior; uniform 1/K by default)
        p = Σ_k π_k p_k
        π_k ← π_k p_k(y) / Σ_j π_j p_j(y)           (p_k(y) = p_k if y else 1 − p_k)
        π_k ← (1 − a) π_k + a π0_k                  (fixed share, rate a; a = 0: Bayes mixture)
        then every member learns (x, y) with its own rule

    (The π update uses the members' p from the last ``predict_proba``, which the loss was charged on,
    when the caller predicted first; the members learn from the row given to ``learn``.)

    Regret: with a = 0, total log loss ≤ member k's total + ln(1/π0_k) for every k, on every stream (ln K
    with the uniform prior); with fixed share, ≤ that of the best sequence of members with m switches
    + ln(1/π0_first) + m ln(1/(a π0_min)) + T ln(1/(1 − a)).
    The members default to SGD at rates 0.003, 0.01, 0.03, 0.1, 0.3 and 1.0. Cost: K dot products per
    event (one feature lookup); state: K weights per coordinate, plus the K mixture weights (kept as
    logs, normalised so the largest is 0, so they never underflow).

    The bound holds on any stream; here members run alone on the same events as the oracle:

    >>> import random
    >>> rng = random.Random(3)
    >>> rows = [({"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)}, rng.random() < 0.3) for _ in range(300)]
    >>> def total(model):
    ...     loss = 0.0
    ...     for x, y in rows:
    ...         p = model.predict_proba(x)
    ...         loss -= math.log(p if y else 1.0 - p)
    ...         model.learn(x, y)
    ...     return loss
    >>> best = min(total(SGD(r)) for r in Mixture.RATES)
    >>> total(Mixture()) <= best + math.log(6)  # the aggregating algorithm's bound (ln K)
    True
    """

    RATES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)

    def __init__(
        self, members: Sequence | None = None, share: float = 0.0, prior: Sequence[float] | None = None
    ) -> None:
        self.members = list(members) if members is not None else [SGD(r) for r in self.RATES]
        self.share = share
        K = len(self.members)
        self.prior = [1.0 / K] * K if prior is None else [v / sum(prior) for v in prior]
        self.log_pi = [math.log(v) for v in self.prior]
        self._predicted: list[float] | None = None  # the members' p at the last predict_proba

    def _member_probas(self, x: dict) -> list[float]:
        return [m.predict_proba(x) for m in self.members]

    def _pi(self) -> list[float]:
        top = max(self.log_pi)
        e = [math.exp(a - top) for a in self.log_pi]
        s = sum(e)
        return [v / s for v in e]

    def predict_proba(self, x: dict) -> float:
        ps = self._predicted = self._member_probas(x)
        return sum(pi * p for pi, p in zip(self._pi(), ps, strict=True))

    def learn(self, x: dict, y: bool) -> None:
        ps = self._member_probas(x)
        charged = self._predicted if self._predicted is not None else ps  # what the loss was charged on
        self._predicted = None
        self.log_pi = [
            a + math.log(max(p if y else 1.0 - p, 1e-300)) for a, p in zip(self.log_pi, charged, strict=True)
        ]
        if self.share > 0.0:
            pi = self._pi()
            self.log_pi = [
                math.log((1.0 - self.share) * v + self.share * v0)
                for v, v0 in zip(pi, self.prior, strict=True)
            ]
        top = max(self.log_pi)
        self.log_pi = [a - top for a in self.log_pi]
        for m, p in zip(self.members, ps, strict=True):
            m.learn(x, y, p)

    @property
    def weights(self) -> list[float]:
        """The mixture weights π_k."""
        return self._pi()
