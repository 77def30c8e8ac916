"""The old home of StudyData (dashboards written for sweeper 0.1 import it from here): see
sweeper.report.studydata, or `from sweeper import StudyData`."""

from sweeper.report.studydata import StudyData

__all__ = ["StudyData"]
