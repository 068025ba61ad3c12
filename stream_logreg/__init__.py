"""stream-logreg: online logistic regression from an event stream.

The textbook update (``stream_logreg.math``), a River classifier (:class:`OnlineLogisticRegression`),
its optimizers (``stream_logreg.optim``) and feature space (``stream_logreg.features``).
"""

from stream_logreg import optim
from stream_logreg.features import FeatureSpace
from stream_logreg.model import OnlineLogisticRegression

__all__ = ["FeatureSpace", "OnlineLogisticRegression", "optim"]
__version__ = "0.1.0"
