"""A sweep's Optuna study: its journal (``optuna.journal``, in the sweep directory or URL), Tune's
``OptunaSearch`` over it (``study_search``), TPE's random start, and reading it back
(``load_study``)."""

from __future__ import annotations

from pathlib import Path

from raymmr.config import objectives
from raymmr.tune.space import SearchSpace

STUDY_NAME = "raymmr"

JOURNAL = "optuna.journal"


def optuna_storage(journal: str | Path):
    """A journal file: optuna.load_study(study_name="raymmr", storage=optuna_storage(path)) reads it."""
    import optuna

    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))


def load_study(out: str):
    """The sweep's Optuna study (from the sweep's URL or directory), or None for grid sweeps
    (which run without Optuna)."""
    import optuna

    from raymmr.rundir import RunDir

    journal = RunDir(out).fetch(JOURNAL, keep_local=True)
    if not journal.exists():
        return None
    return optuna.load_study(study_name=STUDY_NAME, storage=optuna_storage(journal))


def tpe_startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the space: a third of the budget, 2 to 10. Optuna's fixed 10
    made TPE random search at any budget of 10 trials or fewer (the search-efficiency benchmark's
    TPE and random searches of 5 trials drew the same five points)."""
    return min(10, max(2, num_samples // 3))


def study_search(space: SearchSpace, t, sweep_url: str, num_samples: int | None = None):
    """Tune's OptunaSearch with its study in the sweep's journal, which reaches the sweep URL after
    every finished trial and before every snapshot of Tune's searcher state (so the URL's journal
    is never older than the snapshot a resumed sweep restores); a sweep resumed on another machine
    reads the study from there."""
    import optuna as ot
    from ray.tune.search.optuna import OptunaSearch

    from raymmr.rundir import RunDir

    class StudySearch(OptunaSearch):
        def on_trial_complete(self, trial_id, result=None, error=False):
            super().on_trial_complete(trial_id, result=result, error=error)
            RunDir(sweep_url).upload(JOURNAL)

        def save(self, checkpoint_path):
            RunDir(sweep_url).upload(JOURNAL)
            super().save(checkpoint_path)

        def restore(self, checkpoint_path):
            # The pickled study points at the journal path of the machine that wrote it.
            super().restore(checkpoint_path)
            self._storage = optuna_storage(RunDir(sweep_url).fetch(JOURNAL, keep_local=True))
            self._ot_study = ot.load_study(study_name=STUDY_NAME, storage=self._storage,
                                           sampler=self._ot_study.sampler)
            for trial in self._ot_trials.values():
                trial.study, trial.storage = self._ot_study, self._storage
            # The journal may be newer than Tune's searcher state: a trial asked after the last
            # experiment snapshot was lost with the driver and will never report. Close it as
            # failed instead of leaving it RUNNING in the study forever.
            known = {trial.number for trial in self._ot_trials.values()}
            running = self._ot_study.get_trials(deepcopy=False, states=(ot.trial.TrialState.RUNNING,))
            for orphan in (t for t in running if t.number not in known):
                print(f"[tune] Optuna trial {orphan.number} was started by the lost driver and never recorded "
                      "by Tune: marked FAIL; Tune asks for a new one in its place")
                self._ot_study.tell(orphan.number, state=ot.trial.TrialState.FAIL)
            # And a trial the lost driver finished after that snapshot: Tune runs it on from its newest
            # checkpoint, but the study already holds its outcome and refuses further reports
            # (UpdateFinishedTrialError ended the resumed sweep). The study keeps the first outcome.
            finished = {s.number: s.state.name for s in self._ot_study.get_trials(deepcopy=False)
                        if s.state.is_finished()}
            for trial_id, trial in self._ot_trials.items():
                if trial.number in finished and trial_id not in self._completed_trials:
                    print(f"[tune] trial {trial_id} (Optuna trial {trial.number}) ended as {finished[trial.number]} "
                          "in the study before the driver was lost; Tune runs it on, the study keeps that outcome")
                    self._completed_trials.add(trial_id)

    journal = RunDir(sweep_url).fetch(JOURNAL, keep_local=True)
    # With a define-by-run space, metric/mode must be given to OptunaSearch itself; several make a
    # multi-objective study (Optuna's TPE sampler handles several objectives).
    metrics, modes = zip(*objectives(t))
    metric, mode = (metrics[0], modes[0]) if len(metrics) == 1 else (list(metrics), list(modes))
    if t.sampler == "random":
        sampler = ot.samplers.RandomSampler(seed=t.seed)
    else:
        startup = tpe_startup_trials(num_samples or t.num_samples)
        sampler = ot.samplers.TPESampler(seed=t.seed, n_startup_trials=startup)
    return StudySearch(space=space.define_by_run, metric=metric, mode=mode, sampler=sampler,
                       study_name=STUDY_NAME, storage=optuna_storage(journal))
