"""The old home of Study (study files written for sweeper 0.1 import it from here): see
sweeper.spec.study, or `from sweeper import Study`."""

from sweeper.spec.study import Study, load_study

__all__ = ["Study", "load_study"]
