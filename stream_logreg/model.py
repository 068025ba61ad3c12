"""The online logistic-regression classifier: River's interface, the textbook update, compiled inner loops.

Numerics that cannot be poisoned. Every feature value that reaches the model is finite (the feature space
refuses the others), but finite values up to ±1.7e308 still overflow: w·x, g·x, g² (AdaGrad's G, FTRL's
n) or w − η·g can leave the double range. Three guards, each on every path (per sample, mini-batch,
compiled or not):

1. Logits are summed in double, and a sum that is not finite (an overflow, or inf − inf) is summed again
   in extended precision (``_kernel._dot``): the logit of finite inputs is its correctly signed value,
   ±inf at worst, and σ(±inf) is 1 or 0. Every probability returned is a finite number in [0, 1].
2. A gradient that is not finite (g·x + l2·w overflowing) refuses the update before anything is written.
3. The step itself is checked: the touched coordinates of w and of every optimizer state array, the bias
   and the bias optimizer's state are saved, the step is applied, and if any of them is not finite they
   are all put back bitwise and the update is refused (``ValueError``, with nothing learned: the feature
   space is rolled back and ``n_iterations`` is not counted).

Why a check with rollback rather than clipping: clipping (River's ``clip_gradient``, also available here)
bounds the loss gradient, not g·x nor g², and any bound small enough to prevent every overflow would change
ordinary updates, so that the model would no longer be exactly the textbook rule (nor River's). The check
costs a copy and a comparison per touched coordinate, changes no accepted update, and works for any
optimizer, including those without a compiled rule. A model restored from a checkpoint is checked too
(:meth:`OnlineLogisticRegression.from_state` refuses non-finite values and negative accumulators).
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any, NamedTuple

import numpy as np
from river import base

from stream_logreg import _batch, _kernel
from stream_logreg import optim as optim_
from stream_logreg.features import FeatureSpace, IndicatorKey, IndicatorName, encode_value
from stream_logreg.math import sigmoid, sigmoid_scalar

__all__ = ["OnlineLogisticRegression"]

_F64 = np.dtype(np.float64)


def _label(y: Any) -> float:
    """A binary label as 0.0/1.0; anything but the numbers 0 and 1 (bools included) is a ``ValueError``."""
    if y is True or y is False:
        return 1.0 if y else 0.0
    if (type(y) is int or type(y) is float or isinstance(y, (numbers.Real, np.bool_))) and (y == 0 or y == 1):
        return 1.0 if y else 0.0
    raise ValueError(f"label must be 0, 1, False or True, got {y!r:.100}")


def _labels(y: Any) -> np.ndarray:
    """Binary labels as a contiguous float64 array. Numeric arrays are converted as they are (their values
    are checked where they are used); any other (strings, objects) is checked label by label."""
    if type(y) is np.ndarray and y.dtype == _F64 and y.flags.c_contiguous:
        return y
    values = np.asarray(y)
    if values.dtype.kind in "biuf":
        return np.ascontiguousarray(values, dtype=np.float64)
    return np.array([_label(v) for v in values.ravel()], dtype=np.float64).reshape(values.shape)


class OnlineLogisticRegression(base.MiniBatchClassifier):
    """Binary logistic regression learned one sample or one mini-batch at a time.

    For a mini-batch X (m×n) with labels y ∈ {0, 1}^m (m = 1 for ``learn_one``), one update is::

        h = σ(Xw + b)
        ∇w = (1/m) Xᵀ(h − y) + l2·w     ∇b = (1/m) 1ᵀ(h − y)
        w ← optimizer(w, ∇w)            b ← b − intercept_lr·∇b   (or optimizer(b, ∇b))

    With ``optimizer=optim.SGD(η)`` that is exactly the textbook rule w ← w − η∇w, b ← b − η∇b. For
    progressive validation, :meth:`predict_learn_one` and :meth:`predict_learn_rows` return the
    prediction of the model before the update and make the update, in one compiled pass. Only the
    coordinates of features present in the batch are updated (a missing feature counts as 0, and so has
    gradient 0). Features map to columns through a :class:`~stream_logreg.features.FeatureSpace`: numbers
    as they are, bools as 0/1, a string ``v`` of key ``k`` as the indicator ``k=v``; unseen features start
    at weight 0. A row with a non-finite or non-numeric value raises a ``ValueError`` that names the
    feature, before anything in the model changes.

    Parameters
    ----------
    optimizer
        The update rule of the weights (``optim.SGD``, ``optim.AdaGrad``, ``optim.FTRL``, ``optim.Mixture``).
        Defaults to ``optim.Mixture()``: a Bayes mixture of SGD at six rates, NAG and FTRL, which needs no
        tuning and tracks drift (0.75× the log loss of River's default LogisticRegression over the 19
        streams of ``bench/ACCURACY.md``; never worse than its best member by more than ln 8 nats). With
        it, ``coef`` / ``weights`` / ``intercept`` are the posterior-weighted means of the members'
        weights (a summary: the prediction is the mixture of the members' probabilities), and
        ``intercept_lr``, ``l1`` and ``initializer`` do not apply. Any explicit optimizer is the textbook
        rule above, exactly.
        River's optimizers (``river.optim.SGD``, ``Adam``, ``AdaGrad``, ``FTRLProximal``, ...) are
        accepted as they are and give River's results: River's SGD with a ``Constant`` or
        ``InverseScaling`` rate is our compiled SGD rule (and checkpoints as ``optim.SGD``); the others
        step through their own dict API (slower; no checkpoint format). Optimizers that change the weights
        before each prediction (``look_ahead``: ``NesterovMomentum``, ``Averager``) are refused.
    l2
        L2 penalty added to the weights' gradient (not the bias's).
    l1
        L1 penalty, River's cumulative penalty (Tsuruoka et al. 2009) applied after each step; needs an
        optimizer with a learning rate (FTRL has its own ``l1``).
    intercept_lr
        Learning rate of the bias, as in River: a number or a River scheduler (evaluated at the weights'
        optimizer's ``n_iterations``). ``None`` gives the bias its own copy of the weights' optimizer (so
        the same step as the weights); ``0`` freezes it.
    clip_gradient
        Clips the loss gradient g = (p − y)·weight of each sample to [−clip_gradient, clip_gradient], as
        River does. It does not bound g·x; what keeps the model finite is described in the module docstring.
    intercept_init
        The bias before any update.
    initializer
        Starting weight of a new feature: ``None`` or River's ``initializers.Zeros()`` (0), or
        ``initializers.Constant(v)``.
    n_bits
        Hash features into 2^n_bits columns instead of keeping a vocabulary (bounded memory).
    max_features
        Vocabulary only: stop adding columns once there are this many; later new features are ignored.
    class_weight
        Weight of each class's samples, e.g. ``{False: 1.0, True: 5.0}`` (keys 0/1 or False/True); it
        multiplies the per-sample weight ``w`` of ``learn_one`` / ``learn_many``.
    scale
        Standardize numeric features online, as River's ``StandardScaler()`` in front of the model would
        (per column: count, mean and population variance; x ↦ (x − mean)/√var, 0 while the variance is 0),
        inside the compiled step and in checkpoints. Indicators of strings are not scaled. One event
        (``learn_one``, ``predict_learn_one``): the statistics learn x, then x is standardized with them and
        learned (River's ``learn_one`` then ``transform_one``). A mini-batch (``learn_many``,
        ``learn_batch``, ``learn_rows``): the statistics learn the whole batch (River's ``learn_many``:
        the batch's mean and variance merged into the running ones), then every row is standardized with
        them and learned; on dict rows a feature absent from a row is not an observation of it (its
        statistics count the rows that have it) and stays absent. Predictions use the statistics so far.
        Sample and class weights do not weigh the statistics (as in River). Values that would make a
        statistic or a standardized value non-finite refuse the event or batch, with nothing learned.
        Not with hashing (``n_bits``): a hashed column is shared by several features. Off by default
        (``bench/ACCURACY.md`` §9): behind a ``StandardScaler`` it would scale twice, and on sparse counts
        (word counts) centering costs accuracy; on raw numeric rows it is what the scaler pipeline gives.

    Attributes
    ----------
    n_samples_seen : int
        Samples learned so far (a mini-batch of m adds m).

    Examples
    --------

    >>> from river import datasets, evaluate, metrics, preprocessing
    >>> from stream_logreg import OnlineLogisticRegression, optim

    >>> model = preprocessing.StandardScaler() | OnlineLogisticRegression(optimizer=optim.SGD(0.1))
    >>> evaluate.progressive_val_score(datasets.Phishing(), model, metrics.Accuracy())
    Accuracy: 89.84%

    """

    def __init__(
        self,
        optimizer: Any = None,
        l2: float = 0.0,
        intercept_lr: Any = None,
        n_bits: int | None = None,
        max_features: int | None = None,
        class_weight: dict | None = None,
        clip_gradient: float = 1e12,
        intercept_init: float = 0.0,
        initializer: Any = None,
        l1: float = 0.0,
        scale: bool = False,
    ) -> None:
        self.optimizer = optim_.Mixture() if optimizer is None else optimizer
        self.l2 = l2
        self.l1 = l1
        self.intercept_lr = intercept_lr
        self.clip_gradient = clip_gradient
        self.intercept_init = intercept_init
        self.initializer = initializer
        self._check_params()
        if not (isinstance(intercept_init, numbers.Real) and math.isfinite(intercept_init)):
            raise ValueError(f"intercept_init must be a finite number, got {intercept_init!r}")
        self.n_bits = n_bits
        self.max_features = max_features
        if scale not in (False, True):
            raise ValueError(f"scale must be True or False, got {scale!r}")
        if scale and n_bits is not None:
            raise ValueError(
                "scale=True needs a vocabulary (n_bits=None): with hashing a column is shared by whatever "
                "features hash to it, a number with an indicator or two numbers of different scales, so its "
                "statistics are no feature's own; put river.preprocessing.StandardScaler() in front instead"
            )
        self.scale = bool(scale)
        self._scale_stats = np.zeros((0, 3))  # per column: count, mean, var (River's StandardScaler)
        self._numeric = np.zeros(0)  # per column: 1.0 if standardized (a number), 0.0 (an indicator)
        self._n_flagged = 0  # columns whose _numeric flag is set
        self.class_weight = class_weight
        self._neg_weight, self._pos_weight = _class_weights(class_weight)
        self.features = FeatureSpace(n_bits=n_bits, max_features=max_features)
        self.n_samples_seen = 0
        self._bias_optimizer = self.optimizer.clone()
        if isinstance(self._bias_optimizer, optim_.Optimizer):
            self._bias_optimizer.resize(1)
        self._b = np.full(1, float(intercept_init))  # the bias, as an array so that it is updated in place
        self._start_mixture_bias()
        self._b_col = np.zeros(1, dtype=np.intp)
        self._b_grad = np.zeros(1)
        self._w = np.zeros(0)
        self._cum_l1 = np.zeros(0)  # the L1 penalty each weight has received (see _l1_penalty)
        self._max_cum_l1 = 0.0
        self._grow(self.features.n_columns)
        self._cols = np.zeros(64, dtype=np.intp)  # scratch buffers of the per-sample path
        self._vals = np.zeros(64)
        self._grads = np.zeros(64)
        self._step: _kernel.SampleStep | bool | None = None  # see _compile_step
        self._layout = _kernel.RowLayout()  # the keys of the last rows and their columns (no look-ups)
        # How batches with given columns are learned (see _plan): by array width, and by frame columns.
        self._array_plans: dict[int, _Plan] = {}
        self._frame_plans: dict[tuple, _Plan] = {}

    @property
    def _mutable_attributes(self) -> set[str]:
        # As River's LogisticRegression; the compiled step copies them, so it is rebuilt (see mutate).
        return {"optimizer", "l2", "l1", "intercept_lr", "clip_gradient", "initializer"}

    def clone(
        self, new_params: dict | None = None, include_attributes: bool = False
    ) -> OnlineLogisticRegression:
        """River's ``clone``. With ``include_attributes`` and no new parameters it is an exact, independent
        copy (``copy.deepcopy``: weights, feature space and optimizer state); with new parameters River's
        rule applies (fresh parameters, learned attributes copied), and the optimizer is sized to the
        copied weights."""
        if include_attributes and not new_params:
            return copy.deepcopy(self)
        clone = super().clone(new_params, include_attributes)
        if include_attributes and isinstance(clone.optimizer, optim_.Optimizer):
            clone.optimizer.resize(len(clone._w))
        return clone

    def _check_params(self) -> None:
        """Check the mutable hyper-parameters (a clear ValueError), and derive what they determine."""
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2!r}")
        if not (isinstance(self.l1, numbers.Real) and 0 <= self.l1 < math.inf):
            raise ValueError(f"l1 must be a finite number >= 0, got {self.l1!r}")
        if self.l1 and not _has_learning_rate(self.optimizer):
            raise ValueError(
                f"l1 needs an optimizer with a learning rate; {type(self.optimizer).__name__} has none "
                "(FTRL has its own l1: FTRL(l1=...))"
            )
        clip = self.clip_gradient
        if not (isinstance(clip, numbers.Real) and clip > 0):
            raise ValueError(f"clip_gradient must be a number > 0, got {clip!r}")
        opt = self.optimizer
        if not (isinstance(opt, optim_.Optimizer) or optim_.is_river(opt)):
            raise ValueError(
                f"optimizer must be one of stream_logreg.optim's or river.optim's, got {opt!r:.100}"
            )
        if optim_.is_river(opt) and optim_.looks_ahead(opt):
            raise ValueError(f"{type(opt).__name__} changes the weights before each prediction (look_ahead), "
                             "which this model does not support")
        self._intercept_rate(0)
        self._init_value = _initial_weight(self.initializer)
        if isinstance(opt, optim_.Mixture) and (self.intercept_lr is not None or self.l1 or self._init_value):
            raise ValueError(
                "the mixture (optim.Mixture, the default optimizer) learns its bias with each member's own "
                "rule and starts its weights at 0: intercept_lr, l1 and initializer do not apply to it"
            )

    @property
    def _mixture(self) -> bool:
        return isinstance(self.optimizer, optim_.Mixture)

    def _start_mixture_bias(self) -> None:
        """A fresh mixture's bias row: every member's bias at the current b, NAG's scale of it 1 (x = 1)."""
        if self._mixture:
            self._bias_optimizer.coef[0, : optim_.Mixture.N_MEMBERS] = self._b[0]
            self._bias_optimizer.coef[0, 8] = 1.0

    def mutate(self, new_attrs: dict[str, Any]) -> None:
        """River's ``mutate``: change mutable hyper-parameters in place (checked as in the constructor)."""
        old = {name: getattr(self, name) for name in new_attrs if hasattr(self, name)}
        super().mutate(new_attrs)
        try:
            self._check_params()
        except ValueError:
            for name, value in old.items():
                setattr(self, name, value)
            raise
        if "optimizer" in new_attrs:
            self._bias_optimizer = self.optimizer.clone()
            if isinstance(self._bias_optimizer, optim_.Optimizer):
                self._bias_optimizer.resize(1)
            if isinstance(self.optimizer, optim_.Optimizer):
                self.optimizer.resize(len(self._w))
            self._start_mixture_bias()
        self._step = None

    def _intercept_rate(self, t: int) -> float | None:
        """The bias's learning rate at the weights' update t, or None if the bias has its own optimizer."""
        lr = self.intercept_lr
        if lr is None:
            return None
        if isinstance(lr, numbers.Real) and not isinstance(lr, bool):
            rate = float(lr)
        elif callable(getattr(lr, "get", None)):  # a River scheduler
            rate = float(lr.get(t))
        else:
            rate = float("nan")
        if not (rate >= 0 and math.isfinite(rate)):
            raise ValueError(f"intercept_lr must be None, a number >= 0 or a River scheduler, got {lr!r}")
        return rate

    def _constant_intercept_lr(self) -> float | None | bool:
        """intercept_lr as a constant (None: the bias optimizer), or False if it changes with t."""
        from river.optim.schedulers import Constant

        lr = self.intercept_lr
        if lr is None or isinstance(lr, numbers.Real):
            return self._intercept_rate(0)
        if type(lr) is Constant:
            return self._intercept_rate(0)
        return False

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"optimizer": optim_.SGD(0.1), "intercept_lr": 0.1}
        yield {"optimizer": optim_.AdaGrad(), "n_bits": 10}
        from river import optim as river_optim

        yield {"optimizer": river_optim.Adam(), "l1": 0.001, "intercept_lr": 0.01}
        yield {"scale": True}  # built-in standardization, every path

    def _unit_test_skips(self):
        # As for River's linear models: learn_many takes one mean-gradient step over the whole batch (the
        # textbook batch formula), which is deliberately not one step per row as a learn_one loop takes.
        return {"check_learn_many_matches_learn_one"}

    # State

    @property
    def intercept(self) -> float:
        """The bias b (with the mixture: the posterior-weighted mean Σ_k π_k b_k of the members' biases)."""
        if self._mixture:
            return float(self._bias_optimizer.coef[0, : optim_.Mixture.N_MEMBERS] @ self.optimizer.posterior)
        return float(self._b[0])

    def _weight_vector(self) -> np.ndarray:
        """w, or with the mixture the posterior-weighted mean Σ_k π_k w_k of the members' weights (a
        summary: the mixture predicts Σ_k π_k σ(w_k·x + b_k), which is not σ of the mean)."""
        if self._mixture:
            return self.optimizer.mean(self.n_features)
        return self._w[: self.n_features]

    @property
    def n_features(self) -> int:
        """How many columns the weight vector has (2^n_bits with hashing)."""
        return self.features.n_columns

    @property
    def coef(self) -> np.ndarray:
        """The weight vector w, one entry per column of the feature space (a read-only view). With the
        mixture, the posterior-weighted mean of its members' weights (see :meth:`_weight_vector`)."""
        view = self._weight_vector()
        view.flags.writeable = False
        return view

    @property
    def weights(self) -> dict:
        """The weights by feature key, as in River: the row's own keys (``1`` and ``"1"``, tuples, ...
        stay distinct); the indicator of a string value ``k: v`` by its name ``"k=v"`` as an
        :class:`~stream_logreg.features.IndicatorName` (a string that is not equal to a feature literally
        named ``"k=v"``). With hashing, where names are not kept, by column index."""
        w = self._weight_vector().tolist()
        if self.features.hashing:
            return {i: wi for i, wi in enumerate(w) if wi != 0.0}
        return {
            IndicatorName(k.key, k.value) if type(k) is IndicatorKey else k: wi
            for k, wi in zip(self.features.keys, w, strict=True)
        }

    def _grow(self, n_columns: int) -> None:
        """Make room for ``n_columns`` weights (capacity doubles; new weights are 0). With ``scale``, every
        column of the feature space is flagged (see :meth:`_flags`) afterwards: the compiled steps read the
        flags of the columns they find."""
        if n_columns <= len(self._w):
            if self.scale:
                self._flags()
            return
        self._step = None  # bound to the old arrays (and holding them: they could not be moved)
        capacity = max(n_columns, 2 * len(self._w), 16)
        n = len(self._w)
        _kernel.grown(self, "_w", capacity)  # the same values, then zeros (pages moved, not copied)
        if self._init_value:
            self._w[n:] = self._init_value
        if isinstance(self.optimizer, optim_.Optimizer):
            self.optimizer.resize(capacity)
        _kernel.grown(self, "_cum_l1", capacity)
        if self.scale:
            _kernel.grown(self, "_scale_stats", capacity)
            _kernel.grown(self, "_numeric", capacity)
            self._flags()

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """The complete learned state: float arrays and a JSON-able dict (for checkpoints, no pickle).

        ``from_state(*model.state())`` gives a model whose predictions and future updates are bitwise
        those of ``model``.
        """
        n = self.n_features
        self.config()  # raises for what a checkpoint cannot hold
        arrays = {"w": self._weight_vector().copy(), "b": np.array([self.intercept])}
        if self.l1:
            arrays["l1.received"] = self._cum_l1[:n].copy()
        if self.scale:
            for k, name in enumerate(("count", "mean", "var")):
                arrays[f"scale.{name}"] = self._scale_stats[:n, k].copy()
        if isinstance(self.optimizer, optim_.Optimizer):
            for name, values in self.optimizer.state_arrays(n).items():
                arrays[f"optimizer.{name}"] = values
            for name, values in self._bias_optimizer.state_arrays(1).items():
                arrays[f"bias_optimizer.{name}"] = values
        meta = {
            "params": self.config(),
            "features": self.features.to_state(),
            "n_samples_seen": self.n_samples_seen,
            "optimizer_iterations": self.optimizer.n_iterations,
            "bias_optimizer_iterations": self._bias_optimizer.n_iterations,
            **({"l1_total": self._max_cum_l1} if self.l1 else {}),
            **({"mixture": self.optimizer.scalars()} if self._mixture else {}),
        }
        return arrays, meta

    def config(self) -> dict:
        """The hyper-parameters as JSON: the optimizer's class and parameters, and the model's own."""
        opt = self.optimizer
        if isinstance(opt, optim_.Optimizer):
            optimizer = {"name": type(opt).__name__,
                         **{k: list(v) if isinstance(v, tuple) else v for k, v in opt._get_params().items()}}
        elif (schedule := optim_.river_sgd_schedule(opt)) is not None:  # the same rule as ours
            optimizer = {"name": "SGD", "lr": schedule[0], "power_t": schedule[1]}
        else:
            raise ValueError(
                "a checkpoint holds the optimizers of stream_logreg.optim and River's SGD with a Constant or "
                f"InverseScaling rate; {type(opt).__name__} has no checkpoint format"
            )
        intercept_lr = self._constant_intercept_lr()
        if intercept_lr is False:
            raise ValueError("a checkpoint holds intercept_lr as None or a number, not a changing schedule")
        initializer = self._init_value
        return {
            "optimizer": optimizer,
            "l2": self.l2,
            **({"l1": self.l1} if self.l1 else {}),
            "intercept_lr": intercept_lr,
            "clip_gradient": self.clip_gradient,
            "intercept_init": self.intercept_init,
            **({"initializer": initializer} if initializer else {}),
            **({"scale": True} if self.scale else {}),
            "n_bits": self.n_bits,
            "max_features": self.max_features,
            "class_weight": None
            if self.class_weight is None
            else {"0": self._neg_weight, "1": self._pos_weight},
        }

    @classmethod
    def from_config(cls, config: dict) -> OnlineLogisticRegression:
        """A fresh model with the hyper-parameters of :meth:`config`."""
        params = dict(config)
        if params.get("class_weight") is not None:
            params["class_weight"] = {int(k): v for k, v in params["class_weight"].items()}
        opt = dict(params.pop("optimizer"))
        name = opt.pop("name")
        if name not in optim_.__all__ or name == "Optimizer":
            raise ValueError(f"unknown optimizer {name!r}; known: {optim_.__all__[1:]}")
        if "initializer" in params:
            from river.optim.initializers import Constant

            params["initializer"] = Constant(params["initializer"])
        return cls(optimizer=getattr(optim_, name)(**opt), **params)

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict) -> OnlineLogisticRegression:
        """The model that :meth:`state` described."""
        model = cls.from_config(meta["params"])
        model.features = FeatureSpace.from_state(meta["features"])
        n = model.features.n_columns
        w = np.asarray(arrays["w"], dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"weights have shape {w.shape}, the feature space needs ({n},)")
        b = np.asarray(arrays["b"], dtype=np.float64)
        if b.shape != (1,):
            raise ValueError(f"the bias has shape {b.shape}, expected (1,)")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ValueError("the weights or the bias hold non-finite values")
        model._w = np.zeros(0)
        model._grow(n)
        model._w[:n] = w
        model._b[:] = b
        prefix = "optimizer."
        model.optimizer.load_state(
            {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)},
            meta["optimizer_iterations"],
            len(model._w),
        )
        prefix = "bias_optimizer."
        model._bias_optimizer.load_state(
            {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)},
            meta["bias_optimizer_iterations"],
            1,
        )
        model.n_samples_seen = int(meta["n_samples_seen"])
        if model.scale:
            stats = [np.asarray(arrays.get(f"scale.{k}", np.zeros(0)), dtype=np.float64)
                     for k in ("count", "mean", "var")]
            if any(a.shape != (n,) for a in stats) or not all(np.isfinite(a).all() for a in stats):
                raise ValueError("the standardization statistics are missing, misshapen or not finite")
            if (stats[0] < 0).any() or (stats[2] < 0).any():
                raise ValueError("the standardization statistics hold negative counts or variances")
            model._scale_stats[:n] = np.stack(stats, axis=1)
        if model._mixture:
            if not isinstance(meta.get("mixture"), dict):
                raise ValueError("the checkpoint lacks the mixture's state (log weights, NAG's t and N)")
            model.optimizer.load_scalars(meta["mixture"])
        if model.l1:
            received = np.asarray(arrays.get("l1.received", np.zeros(n)), dtype=np.float64)
            total = float(meta.get("l1_total", 0.0))
            if received.shape != (n,) or not (np.isfinite(received).all() and math.isfinite(total)):
                raise ValueError("the L1 penalty state is missing, of the wrong shape or not finite")
            model._cum_l1[:n] = received
            model._max_cum_l1 = total
        model._step = None  # the feature space and the optimizers' arrays were replaced
        model._layout.clear()
        if model.features.n_bits is None:  # the look-ups of the vocabulary's indicators, as before the save
            model._layout.fill(model.features.keys)
        return model

    # The per-sample path

    def _encode(self, x: dict, grow: bool) -> int:
        """Write row ``x`` into the scratch buffers; return how many entries (compiled fast path first)."""
        try:
            n = _kernel.encode(x, self.features._columns, self._cols, self._vals, self.features.hashing)
        except TypeError:  # x is not a dict
            _check_row(x)
            raise
        if n >= 0:
            return n
        return self._encode_slow(x, grow)

    def _encode_slow(self, x: dict, grow: bool) -> int:
        """:meth:`_encode` through the feature space (compiled): grows it, or raises on a bad value."""
        if len(x) > len(self._cols):
            size = 2 * len(x)
            self._cols, self._vals, self._grads = (
                np.zeros(size, dtype=np.intp), np.zeros(size), np.zeros(size)
            )
            self._step = None
        n = self.features.encode_into(x, grow, self._cols, self._vals, layout=self._layout)
        if grow:
            self._grow(self.features.n_columns)
        return n

    def _raw_dot_one(self, x: dict) -> float:
        if self.features.hashing:  # colliding features are merged first, exactly as when learning
            n = self._encode(x, grow=False)
            return _kernel.dot(self._w, self._cols, self._vals, n) + self._b[0]
        try:
            z = _kernel.dot_dict(x, self.features._columns, self._w)
        except TypeError:  # x is not a dict (the compiled functions take dicts only)
            _check_row(x)
            raise
        if z != z:  # NaN: an unknown feature or a value the feature space must judge
            n = self._encode_slow(x, grow=False)
            z = _kernel.dot(self._w, self._cols, self._vals, n)
        return z + self._b[0]

    def predict_proba_one(self, x: dict, **kwargs: Any) -> dict[bool, float]:
        """{False: 1 − p, True: p} with p = σ(w·x + b) (the mixture: Σ_k π_k σ(w_k·x + b_k)); unseen
        features count as 0."""
        step = self._step
        if step is None:
            step = self._step = self._compile_step()
        if step and not self.scale:  # every feature known: the compiled step's look-ups, bitwise the same p
            p = step.predict(x)
            if p >= 0.0:
                return {False: 1.0 - p, True: p}
        p = self._mixture_proba_one(x) if self._mixture else sigmoid_scalar(self._raw_dot(x))
        return {False: 1.0 - p, True: p}

    def _raw_dot(self, x: dict) -> float:
        """w·x + b, of the standardized row with ``scale``."""
        if self.scale:
            step = self._step
            if step is None:
                step = self._step = self._compile_step()
            if step and (z := step.logit(x)) == z:  # NaN: the general path
                return z
            n = self._scaled_encode(x)
            return _kernel.dot(self._w, self._cols, self._vals, n) + self._b[0]
        return self._raw_dot_one(x)

    def debug_one(self, x: dict, decimals: int = 5) -> str:
        """A table that explains p = σ(w·x + b) for row ``x``, as River's ``LinearRegression.debug_one``:
        each feature's value, weight and contribution (value × weight), largest first, then the bias.
        Features the model has not seen count as 0 and are not listed.

        >>> model = OnlineLogisticRegression(optimizer=optim_.SGD(0.5))
        >>> model.learn_one({"age": 2.0, "city": "Paris"}, True)
        >>> print(model.debug_one({"age": 2.0, "city": "Paris", "new": 1.0}, decimals=2))
        ... # doctest: +NORMALIZE_WHITESPACE
        Name         Value   Weight   Contribution
               age    2.00     0.50           1.00
        city=Paris    1.00     0.25           0.25
         Intercept    1.00     0.25           0.25

        """
        from river import utils

        _check_row(x)
        cols, vals = self.features.encode(x, grow=False)  # the row as learned: indicators, merged columns
        if self.features.hashing:
            names = [str(c) for c in cols]
        else:
            names = [str(self.features.keys[c]) for c in cols]
        w = self._weight_vector()
        weights = [float(w[c]) for c in cols]
        contributions = [v * w for v, w in zip(vals, weights, strict=True)] + [self.intercept]

        def fmt(value: float) -> str:
            return f"{value: ,.{decimals}f}"

        order = list(reversed(np.argsort(contributions[:-1], kind="stable"))) + [len(cols)]
        return utils.pretty.print_table(
            headers=["Name", "Value", "Weight", "Contribution"],
            columns=[names + ["Intercept"], [fmt(v) for v in [*vals, 1.0]],
                     [fmt(w) for w in [*weights, self.intercept]], [fmt(c) for c in contributions]],
            order=order,
        )

    def predict_one(self, x: dict, **kwargs: Any) -> bool:
        """Whether p = σ(w·x + b) > 0.5, as a Python bool."""
        if self._mixture:
            return bool(self._mixture_proba_one(x) > 0.5)
        return bool(self._raw_dot(x) > 0.0)

    def learn_one(self, x: dict, y: Any, w: float = 1.0, **kwargs: Any) -> None:
        """One update with m = 1 on row ``x``, label ``y`` and sample weight ``w``."""
        step = self._step
        if step:  # the compiled step took it (as in predict_learn_one; with scale, no prediction made)
            if (step.scaled(x, y, w, False) if self.scale else step(x, y, w)) >= 0.0:
                self.n_samples_seen += 1
                return
        del step  # (it holds the arrays, which growing then copies instead of moving)
        self.predict_learn_one(x, y, w)

    def predict_learn_one(self, x: dict, y: Any, w: float = 1.0) -> float:
        """Progressive validation of one sample: p = σ(w·x + b), then ``learn_one(x, y, w)``; returns p.

        p and the model afterwards are bitwise those of ``predict_proba_one(x)[True]`` followed by
        ``learn_one(x, y, w)``, at a fraction of the cost: the row is encoded and its dot product computed
        once, and for a row of known features with one of the package's optimizers the whole update is
        one compiled call (:meth:`_compile_step`), with ``scale`` too (the statistics, the standardized
        row, the prediction and the step). A refused update (a bad value, a non-finite step) raises
        ``ValueError`` and leaves the model as it was.
        """
        step = self._step
        if step is None:
            step = self._step = self._compile_step()
        if step:
            p = step.scaled(x, y, w) if self.scale else step(x, y, w)
            if p >= 0.0:
                self.n_samples_seen += 1
                return p
            if p != p:
                raise ValueError(f"the update for {x!r:.200} is not finite; refused")
        del step  # (it holds the arrays, which growing then copies instead of moving)
        # The general path: new features or a bad value (the feature space decides, and may grow), a label
        # of another type, or an optimizer without a compiled rule.
        _check_row(x)
        target = _label(y)
        features = self.features
        n = _kernel.encode(x, features._columns, self._cols, self._vals, features.n_bits is not None)
        mark = None
        if n < 0:
            mark = features.mark()
            n = self._encode_slow(x, grow=True)
        return self._learn_encoded(n, target, w, x, mark)

    def _learn_encoded(self, n: int, target: float, w: float, what: str | dict, mark: tuple | None) -> float:
        """The general path of :meth:`predict_learn_one` on the row in the scratch buffers (first ``n``
        entries), described by ``what`` in errors; ``mark``: the feature space before the row created
        columns (rolled back on refusal), or None."""
        saved = None
        p_before = None
        try:
            if self.scale:  # learn the statistics, then standardize the row with them (River's order)
                self._flags()
                before = self._vals[:n].copy()  # the prediction: standardized with the statistics so far
                _kernel.scale_row(self._cols, before, n, self._scale_stats, self._numeric, False, None)
                if self._mixture:
                    p_before = self._mixture_step().predict_encoded(self._cols, before, n)
                else:
                    p_before = sigmoid_scalar(_kernel.dot(self._w, self._cols, before, n) + self._b[0])
                saved = np.empty(3 * n)
                stats, numeric = self._scale_stats, self._numeric
                if not _kernel.scale_row(self._cols, self._vals, n, stats, numeric, True, saved):
                    raise ValueError(f"{_described(what)} has values too large to standardize; refused")
            if self._mixture:
                p = self._mixture_step().learn_encoded(n, target, w)
                if p != p:
                    raise ValueError(f"{_described(what)} would make the model non-finite (values too "
                                     "large); refused")
                self.n_samples_seen += 1
                return p if p_before is None else p_before
            # z = w·x + b, p = σ(z), g = (p − y)·w·c into _b_grad, grads = g·x + l2·w; NaN if not finite
            p = _kernel.predict_gradient(
                self._w, self._cols, self._vals, n, self._b, target, w,
                self._pos_weight if target else self._neg_weight, self.l2, float(self.clip_gradient),
                self._grads, self._b_grad,
            )
            if p != p:
                raise ValueError(f"{_described(what)} is not finite; refused")
            self._update(self._cols, self._grads, n, self._b_grad[0], what)
        except BaseException:
            if saved is not None:
                _kernel.unscale_row(self._cols, n, self._scale_stats, self._numeric, saved)
            if mark is not None:
                self._rollback(mark)
            raise
        self.n_samples_seen += 1
        return p if p_before is None else p_before

    def predict_learn_encoded(
        self, cols: np.ndarray, vals: np.ndarray, n: int, y: Any, w: float = 1.0
    ) -> float:
        """:meth:`predict_learn_one` of a row already encoded: ``cols[:n]`` its columns (intp) and
        ``vals[:n]`` their values (float64), as the feature space encodes a row (``features.columns``
        gives a feature's column; a number as it is, a bool as 0/1, the indicator ``k=v`` of a string as
        1.0). Returns p before the update, bitwise what ``predict_learn_one`` returns for the dict row, and
        leaves the model bitwise as that would.

        The contract (a ``ValueError`` if broken, nothing changed): every column exists in the feature
        space (below ``n_features``), every value is finite. The caller guarantees that the columns are
        distinct (as a dict's keys are) and, with hashing, that colliding features were summed into one
        entry. A refused update (a non-finite step or statistic) raises ``ValueError`` and leaves the
        model as it was. The arrays are not written.

        >>> model = OnlineLogisticRegression(optimizer=optim_.SGD(0.1), scale=True)
        >>> model.learn_one({"a": 1.0, "b": 2.0}, True)
        >>> cols = np.array([model.features.columns["a"], model.features.columns["b"]], dtype=np.intp)
        >>> twin = model.clone(include_attributes=True)
        >>> model.predict_learn_encoded(cols, np.array([3.0, 2.0]), 2, False) == twin.predict_learn_one(
        ...     {"a": 3.0, "b": 2.0}, False)
        True
        >>> model.coef.tobytes() == twin.coef.tobytes()
        True

        """
        target = _label(y)
        if not (type(cols) is np.ndarray and cols.dtype == np.intp and type(vals) is np.ndarray
                and vals.dtype == _F64 and 0 <= n <= min(len(cols), len(vals))):
            raise ValueError("cols must be an intp array and vals a float64 array, with n entries or more")
        c, v = cols[:n], vals[:n]
        if n and not (0 <= c.min() and c.max() < self.features.n_columns and np.isfinite(v).all()):
            raise ValueError("the columns must exist in the feature space (0 to "
                             f"{self.features.n_columns - 1}) and the values be finite")
        step = self._step
        if step is None:
            step = self._step = self._compile_step()
        if step:
            p = step.predict_learn_encoded(np.ascontiguousarray(c), np.ascontiguousarray(v), n, target, w)
            if p != p:
                raise ValueError("the update of the encoded row would make the model non-finite (values too "
                                 "large); refused")
            self.n_samples_seen += 1
            return p
        if n > len(self._cols):  # an optimizer without a compiled rule: the general path
            self._cols, self._vals, self._grads = (
                np.zeros(2 * n, dtype=np.intp), np.zeros(2 * n), np.zeros(2 * n)
            )
            self._step = None  # bound to the old buffers
        self._cols[:n], self._vals[:n] = c, v
        return self._learn_encoded(n, target, w, "the update of the encoded row", None)

    def compiled_step(self) -> _kernel.SampleStep | _kernel.MixtureStep | None:
        """The compiled per-sample step bound to the model's current arrays, for compiled callers of
        ``_kernel.predict_learn_row`` (see ``stream_logreg/_kernel.pxd``), or None if the optimizer has
        none. Valid until the model's arrays change (a new feature, ``from_state``, ``mutate``): ask again
        after anything but ``predict_learn_row`` touched the model. The caller adds each accepted row to
        ``n_samples_seen``."""
        step = self._step
        if step is None:
            step = self._step = self._compile_step()
        return step or None

    def _compile_step(self) -> _kernel.SampleStep | bool:
        """The compiled per-sample update bound to the current arrays, or False if the optimizer has no
        compiled twin (a subclass or another class: its ``step`` is then called).

        The twin is the kernel function each optimizer's ``step`` calls, with the optimizer's
        hyper-parameters, which are immutable (River's convention); :meth:`_grow`, the slow path and
        :meth:`from_state` drop the compiled step whenever they replace an array it is bound to.
        """
        if self._mixture:
            opt, bias = self.optimizer, self._bias_optimizer
            step = _kernel.MixtureStep(  # the feature dict as it is (see FeatureSpace.columns)
                self.features._columns, self.features.n_bits is not None, self._layout, self._cols,
                self._vals, opt.coef, bias.coef, opt.log_weights, opt.nag, opt.rates, float(opt.nag_lr),
                float(opt.ftrl_alpha), float(opt.ftrl_beta), self._neg_weight, self._pos_weight,
                float(self.l2), float(self.clip_gradient), opt, bias, space=self.features,
            )
            if self.scale:
                step.bind_scale(self._scale_stats, self._numeric)
            return step
        twins = optim_.compiled_rule(self.optimizer), optim_.compiled_rule(self._bias_optimizer)
        intercept_lr = self._constant_intercept_lr()
        if twins[0] is None or twins[1] is None or intercept_lr is False or self.l1:
            return False
        (rule, hyper, w_state), (_, _, b_state) = twins
        step = _kernel.SampleStep(
            self.features._columns, self.features.n_bits is not None, self._layout, self._cols, self._vals,
            self._grads, self._w, self._b, self._neg_weight, self._pos_weight, self.l2, intercept_lr,
            rule, hyper, w_state, b_state, self.optimizer, self._bias_optimizer, float(self.clip_gradient),
            space=self.features,
        )
        if self.scale:  # the step standardizes every row it learns with the model's statistics
            step.bind_scale(self._scale_stats, self._numeric)
        return step

    def _flags(self) -> None:
        """Mark the new columns for standardization: numbers (and bools) yes, indicators of strings no."""
        n = self.features.n_columns
        if self._n_flagged < n:
            keys = self.features.keys
            for c in range(self._n_flagged, n):
                self._numeric[c] = 0.0 if type(keys[c]) is IndicatorKey else 1.0
            self._n_flagged = n

    def _standardized(self, X: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Dense rows X (columns ``cols``) as ``scale_row`` transforms them, without learning."""
        self._flags()
        stats = self._scale_stats[cols]
        Z = _standardize(X, stats[:, 1], stats[:, 2], self._numeric[cols] != 0.0)
        return np.ascontiguousarray(np.clip(Z, -_MAX, _MAX))

    # Built-in standardization of a mini-batch: River's StandardScaler.learn_many, then transform_many.
    # The batch's statistics per column (count, mean, population variance) are merged into the running
    # ones (Chan et al.'s pairwise formula, as River), then every entry is standardized with the merged
    # statistics. Nothing is written here: the caller commits ``learned`` once the update was accepted.
    # (Dense rows here; CSR rows in one compiled pass, ``_batch.standardize_entries``, the same formulas.)

    def _scale_dense(self, X: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, tuple | None]:
        """Dense finite rows X (columns ``cols``, every row has every column): the standardized rows and
        the statistics learned (the numeric columns and their new (count, mean, var))."""
        self._flags()
        numeric = self._numeric[cols] != 0.0
        if not numeric.any():
            return X, None
        Xn = X[:, numeric]
        m = Xn.shape[0]
        with np.errstate(over="ignore", invalid="ignore"):
            lo, hi = Xn.min(axis=0), Xn.max(axis=0)
            const = lo == hi  # one value: its mean is that value exactly, its variance 0
            mean = np.where(const, lo, (Xn / m).sum(axis=0))  # Σ x/m: no overflow for finite x
            var = np.where(const, 0.0, (np.square(Xn - mean) / m).sum(axis=0))
        stat_cols = cols[numeric]
        merged = _merge_statistics(self._scale_stats[stat_cols], float(m), mean, var)
        Z = X.copy()
        Z[:, numeric] = _standardize(Xn, merged[:, 1], merged[:, 2], True)
        _check_standardized(merged, Z)
        return Z, (stat_cols, merged)

    def _commit_statistics(self, learned: tuple | None) -> None:
        if learned is not None:
            stat_cols, merged = learned
            self._scale_stats[stat_cols] = merged

    def _csr_probas(self, cols: np.ndarray, vals: np.ndarray, indptr: np.ndarray) -> np.ndarray:
        """P(y = 1) of each CSR row (the model's columns), without learning."""
        m = len(indptr) - 1
        out = np.empty(m)
        if self._mixture:
            self._mixture_step().predict_rows(cols, vals, indptr, out)
            return out
        w, b, dot = self._w, self._b[0], _kernel.dot
        for i in range(m):
            a, e = indptr[i], indptr[i + 1]
            out[i] = dot(w, cols[a:e], vals[a:e], e - a) + b
        return sigmoid(out)

    def _scaled_encode(self, x: dict) -> int:
        """Row ``x`` encoded into the scratch buffers and standardized with the statistics so far."""
        n = self._encode(x, grow=False)
        self._flags()
        _kernel.scale_row(self._cols, self._vals, n, self._scale_stats, self._numeric, False, None)
        return n

    def _mixture_step(self) -> _kernel.MixtureStep:
        """The compiled mixture bound to the current arrays (made again after any of them changed)."""
        step = self._step
        if step is None:
            step = self._step = self._compile_step()
        return step

    def _mixture_proba_one(self, x: dict) -> float:
        if self.scale:
            if (p := self._mixture_step().predict_scaled(x)) >= 0.0:
                return p
            n = self._scaled_encode(x)
            return self._mixture_step().predict_encoded(self._cols, self._vals, n)
        p = self._mixture_step().predict(x)
        if p >= 0.0:
            return p
        _check_row(x)
        n = self._encode_slow(x, grow=False)
        return self._mixture_step().predict_encoded(self._cols, self._vals, n)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_step"] = None  # bound to this instance's arrays: the copy makes its own
        return state

    def _l1_penalty(self, cols: np.ndarray) -> None:
        """River's cumulative L1 penalty (Tsuruoka et al. 2009), after the optimizer's step: the total
        penalty u ← u + λ1·η (η the optimizer's learning rate), then each touched weight is moved towards 0
        by what it has not yet received (u − q_j for w_j > 0, u + q_j for w_j < 0), never past it, and q_j
        records what it received. Applied in the order of ``cols``, as River iterates over the row."""
        self._max_cum_l1 += self.l1 * self.optimizer.learning_rate
        u, w, q = self._max_cum_l1, self._w, self._cum_l1
        for j in cols.tolist():
            wj = w[j]
            if wj > 0:
                w[j] = max(0.0, wj - (u + q[j]))
            elif wj < 0:
                w[j] = min(0.0, wj + (u - q[j]))
            q[j] += w[j] - wj

    def _update(self, cols: np.ndarray, grads: np.ndarray, n: int, g_b: float, what: str | dict) -> None:
        """One optimizer step of the weights ``cols[:n]`` (gradient ``grads[:n]``) and of the bias
        (gradient ``g_b``), refused with a ``ValueError`` naming ``what`` (a description, or the row) if it
        would leave a non-finite value in w, b or an optimizer's state; then everything is put back
        bitwise (see the module docstring)."""
        step = self._step
        if step is None:
            step = self._step = self._compile_step()
        if step:  # the compiled rule, checked as in the per-sample step
            if not step.update(cols, grads, n, g_b):
                raise ValueError(
                    f"{_described(what)} would make the model non-finite (values too large); refused"
                )
            return
        opt, bias_opt = self.optimizer, self._bias_optimizer
        rate = self._intercept_rate(opt.n_iterations)
        saved = optim_.save(opt, self._w, cols, n)
        saved_bias = optim_.save(bias_opt, self._b, self._b_col, 1)
        try:
            optim_.step(opt, self._w, cols, grads, n)
            if rate is None:
                self._b_grad[0] = g_b
                optim_.step(bias_opt, self._b, self._b_col, self._b_grad, 1)
            else:
                self._b[0] -= rate * g_b
            if optim_.finite(opt, self._w, cols, n) and optim_.finite(bias_opt, self._b, self._b_col, 1):
                if self.l1:
                    self._l1_penalty(cols[:n])
                return
        except (OverflowError, ZeroDivisionError, FloatingPointError):  # Python floats in River's steps
            pass
        optim_.restore(opt, self._w, cols, n, saved)
        optim_.restore(bias_opt, self._b, self._b_col, 1, saved_bias)
        raise ValueError(f"{_described(what)} would make the model non-finite (values too large); refused")

    # The mini-batch path: numpy arrays (fast) and pandas frames (River's interface)

    def _rollback(self, mark: tuple[int, int]) -> None:
        """Undo the feature-space growth since ``mark`` (a refused row or batch leaves no trace)."""
        self.features.rollback(mark)
        self._n_flagged = min(self._n_flagged, self.features.n_columns)  # those columns may be other keys'
        self._layout.clear()  # it may hold keys that are gone, whose columns will be other keys'
        self._array_plans.clear()
        self._frame_plans.clear()

    def _plan(self, cols: np.ndarray) -> _Plan:
        """How to learn a batch whose columns are the model columns ``cols`` (-1: ignored feature)."""
        keep = None
        if (cols < 0).any():  # features ignored by a full vocabulary
            keep = cols >= 0
            cols = cols[keep]
        inverse = None
        if len(np.unique(cols)) < len(cols):  # hash collisions (or a repeated frame column): merge them
            cols, inverse = np.unique(cols, return_inverse=True)
        cols = np.ascontiguousarray(cols, dtype=np.intp)
        dense = keep is None and inverse is None and np.array_equal(cols, np.arange(len(cols)))
        n_ignored = 0 if keep is None else int(len(keep) - keep.sum())
        return _Plan(cols, keep, inverse, dense, n_ignored)

    def _plan_of(self, cache: dict, key: Any, names: Any) -> _Plan:
        """The cached plan of a batch with feature keys ``names``; creates their columns if needed."""
        plan = cache.get(key)
        if plan is None:
            plan = self._plan(self.features.columns_of(names, grow=True))
            self._grow(self.features.n_columns)
            if len(cache) >= 256:
                cache.clear()
            cache[key] = plan
        else:
            self.features.n_dropped += plan.n_ignored  # as columns_of counts them on every batch
        return plan

    def _batch_step(self, X: np.ndarray, plan: _Plan, y: np.ndarray, sample_weight: Any, names: Any) -> None:
        """One update with the batch formula on rows X, laid out by ``plan``; y is contiguous float64.

        One BLAS pass over X for z = Xw + b, one for ∇w = (1/m)Xᵀr, and compiled passes over the batch in
        between (r = σ(z) − y); the model is only written once everything is known to be finite.
        """
        m = X.shape[0]
        if m == 0:
            return
        X0 = X
        if plan.keep is not None:
            if not np.isfinite(X[:, ~plan.keep]).all():  # ignored, but still checked
                raise ValueError(_non_finite_message(X0, names))
            X = X[:, plan.keep]
        if plan.inverse is not None:
            merged = np.zeros((m, len(plan.cols)))
            with np.errstate(over="ignore", invalid="ignore"):
                np.add.at(merged.T, plan.inverse, X.T)
            if not np.isfinite(merged).all() and np.isfinite(X).all():
                raise ValueError(
                    "features that share a hashed column have a sum of values too large for a float; "
                    "the batch was refused"
                )
            X = merged
        elif not (X.flags.c_contiguous or X.flags.f_contiguous):
            X = np.ascontiguousarray(X)
        cols = plan.cols
        learned = None
        if self.scale:  # the statistics learn the whole batch, then the batch is standardized with them
            if not np.isfinite(X).all():
                raise ValueError(_non_finite_message(X0, names))
            X, learned = self._scale_dense(X, cols)
        if self._mixture:
            if not np.isfinite(X).all():
                raise ValueError(_non_finite_message(X0, names))
            if sample_weight is not None:
                sample_weight = np.broadcast_to(np.asarray(sample_weight, dtype=np.float64), (m,))
            ok = self._mixture_step().learn_rows(
                *_dense_csr(X, cols), y, sample_weight, np.empty(m)
            )
            if not ok:
                raise ValueError("the batch would make the model non-finite (values too large); refused")
            self._commit_statistics(learned)
            self.n_samples_seen += m
            return
        w = self._w[: len(cols)] if plan.dense else self._w[cols]
        z, e = np.empty(m), np.empty(m)
        if not _kernel.logits(X, w, self._b[0], z, e):
            raise ValueError(_non_finite_message(X0, names))
        np.exp(e, out=e)  # e = exp(−|z|), never overflows
        if sample_weight is not None:
            sample_weight = np.ascontiguousarray(
                np.broadcast_to(np.asarray(sample_weight, dtype=np.float64), (m,))
            )
        grad = np.empty(len(cols))
        s = _kernel.batch_gradient(
            X, z, e, y, sample_weight, self._neg_weight, self._pos_weight, self.l2, float(self.clip_gradient),
            w, grad
        )
        if s != s:
            raise ValueError(_non_finite_message(X0, names))
        self._update(cols, grad, len(cols), s / m, "the batch")
        self._commit_statistics(learned)
        self.n_samples_seen += m

    def learn_rows(self, xs: list[dict], ys: Any, sample_weight: Any = None) -> None:
        """One mini-batch update (the textbook batch formula, m = len(xs)) on dict rows.

        The same update as :meth:`learn_many` on the frame of these rows with missing features as 0. A row
        with a bad value raises ``ValueError`` naming the feature, and the model is left as it was.
        """
        self._learn_rows(xs, ys, sample_weight, False)

    def predict_learn_rows(self, xs: list[dict], ys: Any, sample_weight: Any = None) -> np.ndarray:
        """Progressive validation of a mini-batch: p_i = σ(w·x_i + b) for each row, then :meth:`learn_rows`.

        Returns the p_i, bitwise what ``predict_proba_one(x_i)[True]`` gives before the update. One pass in
        compiled code: the rows are encoded into one buffer (new features through the feature space),
        then z_i, p_i, r_i = (p_i − y_i)·s_i·c_{y_i}, ∇w_j = (1/m) Σ_i r_i x_ij + l2·w_j over the touched
        columns j and ∇b = (1/m) Σ_i r_i, then one optimizer step. Colliding hashed features are merged
        per row. A bad row or a non-finite update raises ``ValueError`` and leaves the model as it was.
        """
        return self._learn_rows(xs, ys, sample_weight, True)

    def predict_learn_encoded_rows(self, cols: np.ndarray, vals: np.ndarray, indptr: np.ndarray, y: Any,
                                   sample_weight: Any = None) -> np.ndarray:
        """:meth:`predict_learn_rows` of rows already encoded, in CSR: row i's columns are
        ``cols[indptr[i]:indptr[i + 1]]`` (intp) and their values ``vals[...]`` (float64), as the feature
        space encodes a row (see :meth:`predict_learn_encoded`); ``y`` one label per row. Returns the p_i
        before the update and leaves the model bitwise as :meth:`predict_learn_rows` of the dict rows would.

        The contract (a ``ValueError`` if broken, nothing changed): ``indptr`` starts at 0 and does not
        decrease, every column exists in the feature space, every value is finite. The caller guarantees
        that the columns of a row are distinct and, with hashing, that colliding features were summed. A
        refused update raises ``ValueError`` and leaves the model as it was. The arrays are not written.

        >>> model = OnlineLogisticRegression(optimizer=optim_.SGD(0.1), scale=True)
        >>> model.learn_one({"a": 1.0, "b": 2.0}, True)
        >>> twin = model.clone(include_attributes=True)
        >>> a, b = model.features.columns["a"], model.features.columns["b"]
        >>> cols, vals = np.array([a, b, b], dtype=np.intp), np.array([3.0, 2.0, 5.0])
        >>> indptr = np.array([0, 2, 3], dtype=np.intp)
        >>> p = model.predict_learn_encoded_rows(cols, vals, indptr, [False, True])
        >>> p.tolist() == twin.predict_learn_rows([{"a": 3.0, "b": 2.0}, {"b": 5.0}], [False, True]).tolist()
        True
        >>> model.coef.tobytes() == twin.coef.tobytes()
        True

        """
        if not (type(cols) is np.ndarray and cols.dtype == np.intp and type(vals) is np.ndarray
                and vals.dtype == _F64 and type(indptr) is np.ndarray and indptr.dtype == np.intp
                and indptr.ndim == 1 and len(indptr) >= 1):
            raise ValueError("cols and indptr must be intp arrays and vals a float64 array")
        m = len(indptr) - 1
        y = _labels(y)
        if y.shape != (m,):
            raise ValueError("expected one label in {0, 1, False, True} per row")
        indptr = np.ascontiguousarray(indptr)
        nnz = int(indptr[-1])
        if not 0 <= nnz <= min(len(cols), len(vals)):
            raise ValueError("indptr must start at 0, not decrease and end within cols and vals")
        c, v = np.ascontiguousarray(cols[:nnz]), np.ascontiguousarray(vals[:nnz])
        _batch.check_rows(c, v, indptr, self.features.n_columns)
        if m == 0:
            return np.empty(0)
        return self._learn_encoded_rows(c, v, indptr, y,
                                        self._sample_weights(sample_weight, m), True, None)

    def _learn_rows(self, xs: Any, ys: Any, sample_weight: Any, predict: bool) -> np.ndarray | None:
        """:meth:`predict_learn_rows`: the rows encoded into one CSR buffer (new features created in row
        order), then :meth:`_learn_encoded_rows`."""
        if type(xs) is not list:
            xs = list(xs)
        m = len(xs)
        if m == 0:
            return np.empty(0)
        y = _labels(ys)
        if y.shape != (m,):
            raise ValueError("expected one label in {0, 1, False, True} per row")
        sample_weight = self._sample_weights(sample_weight, m)
        features = self.features
        merge = features.n_bits is not None
        try:
            size = sum(map(len, xs))  # a row has at most one entry per key
        except TypeError:
            i = next(i for i, x in enumerate(xs) if not isinstance(x, dict))
            raise ValueError(f"row {i}: a row must be a dict of features, got {type(xs[i]).__name__}"
                             ) from None
        cols, vals = np.empty(size, dtype=np.intp), np.empty(size)
        indptr = np.zeros(m + 1, dtype=np.intp)
        mark = features.mark()
        try:
            i = 0
            layout = self._layout
            while (i := _kernel.encode_rows(xs, i, features._columns, cols, vals, indptr, merge, layout,
                                            -1 if merge else len(features.keys))) < m:
                # new features or a bad value: the feature space decides (and may grow)
                try:
                    n_row = features.encode_into(xs[i], True, cols, vals, indptr[i], layout)
                    indptr[i + 1] = indptr[i] + n_row
                except ValueError as e:
                    raise ValueError(f"row {i}: {e}") from None
                i += 1
        except BaseException:
            self._rollback(mark)  # forget what the earlier rows added
            raise
        nnz = indptr[m]  # fewer than `size` where a full vocabulary ignored features
        return self._learn_encoded_rows(cols[:nnz], vals[:nnz], indptr, y, sample_weight, predict, mark)

    @staticmethod
    def _sample_weights(sample_weight: Any, m: int) -> np.ndarray | None:
        if sample_weight is None:
            return None
        return np.ascontiguousarray(np.broadcast_to(np.asarray(sample_weight, dtype=np.float64), (m,)))

    def _learn_encoded_rows(self, cols: np.ndarray, vals: np.ndarray, indptr: np.ndarray, y: np.ndarray,
                            sample_weight: np.ndarray | None, predict: bool, mark: tuple | None
                            ) -> np.ndarray:
        """The mini-batch step on the m = len(y) >= 1 CSR rows (``cols``/``vals``: exactly their entries);
        the predictions are only made with ``predict`` (with ``scale`` they cost a pass of their own: the
        rows are standardized with the statistics before the batch). ``mark``: the feature space before
        the rows created columns (rolled back on refusal), or None."""
        m = len(y)
        try:
            self._grow(self.features.n_columns)
            learned, before = None, None
            if self.scale:  # the statistics learn the whole batch, then the rows are standardized with them
                self._flags()
                before = np.empty(len(cols)) if predict else None  # the rows with the statistics so far
                stats, numeric = np.ascontiguousarray(self._scale_stats), np.ascontiguousarray(self._numeric)
                vals, learned = _batch.standardize_entries(cols, vals, stats, numeric, before)
                if predict:
                    before = self._csr_probas(cols, before, indptr)
            p = np.empty(m)
            if self._mixture:
                if not self._mixture_step().learn_rows(cols, vals, indptr, y, sample_weight, p):
                    raise ValueError("the batch would make the model non-finite (values too large); refused")
            else:
                size = len(cols)
                touched, grads, g_b = np.empty(size, dtype=np.intp), np.empty(size), np.empty(1)
                n = _kernel.batch_predict_gradient(
                    self._w, self._b, cols, vals, indptr, y, sample_weight, self._neg_weight,
                    self._pos_weight, self.l2, float(self.clip_gradient), p, touched, grads, g_b,
                )
                if n < 0:
                    raise ValueError("the update is not finite (values too large); the batch was refused")
                self._update(touched, grads, n, float(g_b[0]), "the batch")
            self._commit_statistics(learned)
        except BaseException:
            if mark is not None:
                self._rollback(mark)  # forget what the rows added
            raise
        self.n_samples_seen += m
        return p if before is None else before

    def learn_batch(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> None:
        """Numpy fast path: one update on a dense float array X (m×n) and labels y ∈ {0, 1}^m.

        Array column j is the feature with key ``j``.
        """
        if not (type(X) is np.ndarray and X.dtype == _F64):
            X = np.asarray(X, dtype=np.float64)
        y = _labels(y)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"expected X of shape (m, n) and y of shape (m,), got {X.shape} and {y.shape}")
        n = X.shape[1]
        names = range(n)
        mark = self.features.mark()
        try:
            self._batch_step(X, self._plan_of(self._array_plans, n, names), y, sample_weight, names)
        except BaseException:
            self._rollback(mark)
            raise

    def _logits(self, X: np.ndarray, names: Any, dense: bool = False) -> np.ndarray:
        """z = Xw + b for rows X whose columns are the features ``names``; unknown features count as 0.

        With ``dense``, the columns of X are the model's first columns. A non-finite value raises.
        """
        X0 = X
        if dense:
            w = self._w[: X.shape[1]]
        else:
            cols = self.features.columns_of(names, grow=False)
            if (cols < 0).any():
                known = cols >= 0
                if not np.isfinite(X[:, ~known]).all():
                    raise ValueError(_non_finite_message(X0, names))
                X, cols = X[:, known], cols[known]
            w = self._w[cols]
        if not (X.flags.c_contiguous or X.flags.f_contiguous):
            X = np.ascontiguousarray(X)
        z = np.empty(X.shape[0])
        if not _kernel.logits(X, w, self._b[0], z, None):
            raise ValueError(_non_finite_message(X0, names))
        return z

    def predict_proba_batch(self, X: np.ndarray) -> np.ndarray:
        """Numpy fast path: p = σ(Xw + b) for a dense float array X (m×n); array column j is key j."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"expected X of shape (m, n), got {X.shape}")
        plan = self._array_plans.get(X.shape[1])
        return self._probas(X, range(X.shape[1]), dense=plan is not None and plan.dense)

    def _probas(self, X: np.ndarray, names: Any, dense: bool = False) -> np.ndarray:
        """P(y = 1) for rows X whose columns are the features ``names`` (see :meth:`_logits`)."""
        if not (self._mixture or self.scale):
            return sigmoid(self._logits(X, names, dense))
        if not np.isfinite(X).all():
            raise ValueError(_non_finite_message(X, names))
        cols = self.features.columns_of(names, grow=False)
        known = cols >= 0
        X = X[:, known] if not known.all() else X
        cols = np.ascontiguousarray(cols[known], dtype=np.intp)
        if self.features.hashing and len(np.unique(cols)) < len(cols):  # merge colliding columns first
            cols, inverse = np.unique(cols, return_inverse=True)
            merged = np.zeros((X.shape[0], len(cols)))
            with np.errstate(over="ignore", invalid="ignore"):
                np.add.at(merged.T, inverse, X.T)
            if not np.isfinite(merged).all():
                raise ValueError("features that share a hashed column have a sum of values too large for a "
                                 "float; the rows were refused")
            X = merged
        if self.scale:
            X = self._standardized(X, cols)
        if not self._mixture:
            z = np.empty(X.shape[0])
            _kernel.logits(np.ascontiguousarray(X), np.ascontiguousarray(self._w[cols]), self._b[0], z, None)
            return sigmoid(z)
        out = np.empty(X.shape[0])
        self._mixture_step().predict_rows(*_dense_csr(X, cols), out)
        return out

    def _frame(self, X: Any) -> tuple[np.ndarray, list]:
        """The values of frame X as a float array, and the feature key of each array column.

        Numeric columns are taken as they are. A column with strings (object, string or category dtype)
        is read cell by cell as ``learn_one`` reads a row: a string ``v`` is the indicator ``k=v`` (one
        array column per distinct value), a number stays in column ``k``; anything else raises, naming
        the feature.
        """
        names = list(X.columns)
        try:
            return X.to_numpy(dtype=np.float64), names
        except (TypeError, ValueError):
            pass
        m = len(X)
        blocks, keys = [], []
        for name in names:
            try:
                blocks.append(X[name].to_numpy(dtype=np.float64))
                keys.append(name)
                continue
            except (TypeError, ValueError):
                pass
            numeric, indicators = None, {}
            for i, v in enumerate(X[name].to_numpy(dtype=object)):
                key, value = encode_value(name, v)  # raises for None, a number-like string, ...
                if key is name:
                    if numeric is None:
                        numeric = np.zeros(m)
                    numeric[i] = value
                else:
                    indicators.setdefault(key, np.zeros(m))[i] = 1.0
            if numeric is not None:
                blocks.append(numeric)
                keys.append(name)
            blocks.extend(indicators.values())
            keys.extend(indicators)
        return (np.column_stack(blocks) if blocks else np.zeros((m, 0))), keys

    def learn_many(self, X: Any, y: Any, w: Any = 1.0, **kwargs: Any) -> None:
        """One mini-batch update on a data frame X (one column per feature) and series y."""
        values, names = self._frame(X)
        target = _labels(y)
        if target.shape != (values.shape[0],):
            raise ValueError(f"expected {values.shape[0]} labels, got an array of shape {target.shape}")
        weights = None if np.isscalar(w) and w == 1 else w
        mark = self.features.mark()
        try:
            plan = self._plan_of(self._frame_plans, tuple(names), names)
            self._batch_step(values, plan, target, weights, names)
        except BaseException:
            self._rollback(mark)
            raise

    def predict_proba_many(self, X: Any) -> Any:
        """A frame with columns False and True: 1 − p and p = σ(Xw + b) for each row of X."""
        import pandas as pd

        values, names = self._frame(X)
        p = self._probas(values, names)
        return pd.DataFrame({False: 1.0 - p, True: p}, index=X.index)

    def predict_many(self, X: Any) -> Any:
        import pandas as pd

        proba = self.predict_proba_many(X)
        return pd.Series(proba[True].to_numpy() > 0.5, index=X.index)


class _Plan(NamedTuple):
    """How the columns of a batch map to the model's: see ``OnlineLogisticRegression._plan``."""

    cols: np.ndarray  # model columns of the kept (and merged) batch columns, contiguous intp
    keep: np.ndarray | None  # mask of the batch columns not ignored by a full vocabulary (None: all)
    inverse: np.ndarray | None  # merged column of each kept batch column, where columns repeat
    dense: bool  # cols is 0..n-1: the weights are the view w[:n]
    n_ignored: int  # batch columns ignored by a full vocabulary


def _described(what: str | dict) -> str:
    """What a refused update was: a description as it is, a row as "the update for <row>" (its repr
    costs microseconds, so it is only made when an update is refused)."""
    return what if isinstance(what, str) else f"the update for {what!r:.200}"


_MAX = float(np.finfo(np.float64).max)


def _merge_statistics(old: np.ndarray, count: Any, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """River's ``StandardScaler.learn_many``: running statistics ``old`` (k×3: count, mean, var) merged
    with a batch's count, mean and population variance per column: n = c + k, a = c/n, b = k/n,
    mean = a·mean₀ + b·mean_batch, var = a·var₀ + b·var_batch + a·b·(mean₀ − mean_batch)²."""
    c0, m0, v0 = old[:, 0], old[:, 1], old[:, 2]
    n = c0 + count
    a, b = c0 / n, count / n
    with np.errstate(over="ignore", invalid="ignore"):
        return np.column_stack([n, a * m0 + b * mean, a * v0 + b * var + a * b * np.square(m0 - mean)])


def _standardize(x: np.ndarray, mean: np.ndarray, var: np.ndarray, numeric: Any) -> np.ndarray:
    """(x − mean)/√var where ``numeric`` (0 where var is 0, as River's ``transform_one``), x elsewhere."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        z = (x - mean) / np.sqrt(np.where(var != 0.0, var, 1.0))
    return np.where(numeric, np.where(var != 0.0, z, 0.0), x)


def _check_standardized(merged: np.ndarray, values: np.ndarray) -> None:
    if not (np.isfinite(merged).all() and np.isfinite(values).all()):
        raise ValueError("the values of the batch are too large to standardize (the running mean, variance "
                         "or a standardized value would not be finite); the batch was refused")


def _dense_csr(X: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense rows X (m×n) whose columns are the model columns ``cols``, as CSR (cols, vals, indptr)."""
    m, n = X.shape
    cols = np.ascontiguousarray(np.tile(cols, m), dtype=np.intp)
    return cols, np.ascontiguousarray(X, dtype=np.float64).ravel(), np.arange(m + 1, dtype=np.intp) * n


def _has_learning_rate(optimizer: Any) -> bool:
    """Whether ``optimizer.learning_rate`` is a number (River's FTRLProximal declares it but has none)."""
    try:
        return isinstance(optimizer.learning_rate, numbers.Real)
    except AttributeError:
        return False


def _check_row(x: Any) -> None:
    """A row must be a dict of features (``None``, a list, ... raise: nothing can be learned from them)."""
    if not isinstance(x, dict):
        raise ValueError(f"a row must be a dict of features, got {type(x).__name__} {x!r:.60}")


def _initial_weight(initializer: Any) -> float:
    """The starting weight of a new feature: 0 (``None``, River's ``Zeros``) or River's ``Constant(v)``."""
    from river.optim import initializers

    if initializer is None or type(initializer) is initializers.Zeros:
        return 0.0
    if type(initializer) is initializers.Constant and math.isfinite(float(initializer.value)):
        return float(initializer.value)
    raise ValueError(
        f"initializer must be None, river.optim.initializers.Zeros() or Constant(v) with v finite, got "
        f"{initializer!r:.100} (a random initializer would make a checkpoint's future updates differ)"
    )


def _class_weights(class_weight: dict | None) -> tuple[float, float]:
    """(negative, positive) class weights from ``{0|False: w0, 1|True: w1}``; missing classes weigh 1."""
    if class_weight is None:
        return 1.0, 1.0
    unknown = [k for k in class_weight if k not in (0, 1)]
    if unknown:
        raise ValueError(f"class_weight keys must be 0/1 or False/True, got {unknown!r}")
    neg, pos = float(class_weight.get(0, 1.0)), float(class_weight.get(1, 1.0))
    if not (neg >= 0 and pos >= 0 and math.isfinite(neg) and math.isfinite(pos)):
        raise ValueError(f"class weights must be finite and >= 0, got {class_weight!r}")
    return neg, pos


def _non_finite_message(X: np.ndarray, names: Any) -> str:
    bad = ~np.isfinite(X)
    if bad.any():
        j = int(np.argmax(bad.any(axis=0)))
        return f"feature {list(names)[j]!r} has non-finite values; the batch was refused"
    return "the update is not finite (values too large); the batch was refused"
