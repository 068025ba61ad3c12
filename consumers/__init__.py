"""The Kafka service: learn an online logistic regression from topics, crash-safe.

:class:`LearnerConfig` holds the settings, :class:`Learner` runs the loop (``Learner(config).run()``, and
``stop()`` from a signal handler), :class:`LearnerStats` is what it counts. ``python -m consumers --help``
runs it from the command line.
"""

from consumers.config import ConfigError, LearnerConfig
from consumers.learner import Learner, LearnerStats

__all__ = ["ConfigError", "Learner", "LearnerConfig", "LearnerStats"]
