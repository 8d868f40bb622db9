"""The redundancy survey: a whole network over a whole image set, streamed (:mod:`analysis.survey.run`),
and its result (:mod:`analysis.survey.result`).

``analysis.survey`` is this package *and* the ``survey`` function: calling the module calls
:func:`analysis.survey.run.survey`, so ``from analysis import survey; survey(model, images)`` and
``import analysis.survey as m`` (a module) both work.
"""

import inspect
import sys
import types

from analysis.survey.result import LayerSurvey, Survey
from analysis.survey.run import survey as run_survey

__all__ = ["LayerSurvey", "Survey", "run_survey"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204 - forwards to run_survey
        return run_survey(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
__signature__ = inspect.signature(run_survey)  # what inspect.signature(analysis.survey) reports
