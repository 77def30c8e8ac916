"""Optuna's trials read from its RDB tables in six plain queries, for RDBStorage._get_trials.

Optuna builds a FrozenTrial from ORM objects: one per trial and one per param, value, attribute
and reported epoch, about 30 for a sweeper trial, and a new distribution object per param. A
worker joining a study of 10,000 trials (each of the sixteen, at every launch) read them in
seconds of CPU. Plain rows, and one distribution object per distinct one, take a fraction of it
and of the memory."""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Container, Iterable
from typing import Any

import sqlalchemy
from optuna import distributions
from optuna.storages._rdb import models  # Optuna's own tables (tests/test_optuna_names.py)
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session

INCLUDED_IN_QUERY = 500  # more trial ids than this are picked out here, not in an IN (...)

# One object per distinct distribution, shared by every trial that has it (Optuna never changes
# a distribution in place): a study has a handful, its trials thousands of params.
_distribution = functools.lru_cache(maxsize=4096)(distributions.json_to_distribution)


def read_trials(
    session: Session,
    study_id: int,
    states: Container[TrialState] | None,
    included_trial_ids: set[int],
    trial_id_greater_than: int,
) -> list[FrozenTrial]:
    """What RDBStorage._get_trials returns, in trial-id order: the study's trials in `states`
    (None: all) whose id is above `trial_id_greater_than` or among `included_trial_ids`."""
    models.StudyModel.find_or_raise_by_id(study_id, session)  # KeyError, as Optuna's
    trials = models.TrialModel
    where = [trials.study_id == study_id]
    if states is not None:
        assert isinstance(states, Iterable)
        where.append(trials.state.in_(list(states)))
    included = {i for i in included_trial_ids if i <= trial_id_greater_than}
    if trial_id_greater_than > -1:
        above = trials.trial_id > trial_id_greater_than
        if len(included) > INCLUDED_IN_QUERY:  # those from the first of them on: picked out below
            where.append(trials.trial_id >= min(included))
        else:
            where.append(
                sqlalchemy.or_(trials.trial_id.in_(included), above) if included else above
            )
    stored = trials.__table__.c  # Optuna keeps the two times as naive UTC in these columns
    columns = (trials.trial_id, trials.number, trials.state, stored.datetime_start,
               stored.datetime_complete)  # fmt: skip
    rows = session.execute(sqlalchemy.select(*columns).where(*where).order_by(trials.trial_id))
    heads = [r for r in rows if r[0] > trial_id_greater_than or r[0] in included]
    ids = sqlalchemy.select(trials.trial_id).where(*where)
    related = _related(session, ids)
    return [_frozen(head, related) for head in heads]


def _related(session: Session, ids: sqlalchemy.Select) -> dict[str, dict[int, list[Any]]]:
    """Per table, the rows of the trials that `ids` selects, by trial id."""
    m = models
    queries = {
        "params": (m.TrialParamModel, (m.TrialParamModel.param_name, m.TrialParamModel.param_value,
                   m.TrialParamModel.distribution_json), m.TrialParamModel.param_id),
        "values": (m.TrialValueModel, (m.TrialValueModel.objective, m.TrialValueModel.value,
                   m.TrialValueModel.value_type), None),
        "user": (m.TrialUserAttributeModel, (m.TrialUserAttributeModel.key,
                 m.TrialUserAttributeModel.value_json), None),
        "system": (m.TrialSystemAttributeModel, (m.TrialSystemAttributeModel.key,
                   m.TrialSystemAttributeModel.value_json), None),
        "steps": (m.TrialIntermediateValueModel, (m.TrialIntermediateValueModel.step,
                  m.TrialIntermediateValueModel.intermediate_value,
                  m.TrialIntermediateValueModel.intermediate_value_type), None),
    }  # fmt: skip
    related: dict[str, dict[int, list[Any]]] = {}
    for name, (model, columns, order) in queries.items():
        query = sqlalchemy.select(model.trial_id, *columns).where(model.trial_id.in_(ids))
        by_trial: dict[int, list[Any]] = {}
        for row in session.execute(query if order is None else query.order_by(order)):
            by_trial.setdefault(row[0], []).append(row[1:])
        related[name] = by_trial
    return related


def _frozen(head: Any, related: dict[str, dict[int, Any]]) -> FrozenTrial:
    trial_id, number, state, started, completed = head
    params, dists = {}, {}
    for name, value, stored in related["params"].get(trial_id, ()):
        dist = _distribution(stored)
        params[name], dists[name] = dist.to_external_repr(value), dist
    scored = related["values"].get(trial_id)
    values = None
    if scored:
        values = [0.0] * len(scored)
        for objective, value, kind in scored:
            values[objective] = models.TrialValueModel.stored_repr_to_value(value, kind)
    steps = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
    return FrozenTrial(
        number=number, state=state, value=None, values=values, datetime_start=_local(started),
        datetime_complete=_local(completed), params=params, distributions=dists,
        user_attrs={key: json.loads(v) for key, v in related["user"].get(trial_id, ())},
        system_attrs={key: json.loads(v) for key, v in related["system"].get(trial_id, ())},
        intermediate_values={step: steps(v, kind)
                             for step, v, kind in related["steps"].get(trial_id, ())},
        trial_id=trial_id,
    )  # fmt: skip


def _local(utc: datetime.datetime | None) -> datetime.datetime | None:
    """A stored time as Optuna's FrozenTrial holds it: naive, in the machine's time zone."""
    if utc is None:
        return None
    return utc.replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)
