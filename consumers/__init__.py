"""The Kafka service: learn an online logistic regression from topics, crash-safe.

:class:`LearnerConfig` holds the settings, :class:`Learner` runs the loop (``Learner(config).run()``, and
``stop()`` from a signal handler), :class:`LearnerStats` is what it counts. The command line is
``stream-logreg`` (:mod:`consumers.cli`; also ``python -m consumers``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from consumers.config import ConfigError, LearnerConfig
from consumers.stats import LearnerStats

if TYPE_CHECKING:
    from consumers.learner import Learner

__all__ = ["ConfigError", "Learner", "LearnerConfig", "LearnerStats"]


def __getattr__(name: str) -> Any:
    # The learner imports kafka-python: it is loaded on first use, so that the commands of the command line
    # that do not need Kafka (demo, inspect, score, report, --help) do not import it.
    if name == "Learner":
        from consumers.learner import Learner

        return Learner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
