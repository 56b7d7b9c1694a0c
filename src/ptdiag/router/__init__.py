"""The router: the user's words (a symptom sentence, an error line, a traceback) to an
ordered plan of specialists, explained.

Stdlib only and no torch, directly or indirectly: `ptdiag route` must answer in well
under a second including interpreter start. The knowledge lives in symptoms.toml.
"""

from ptdiag.router.evidence import with_evidence
from ptdiag.router.plan import SPECIALISTS, Route, fixed_route
from ptdiag.router.routing import route, triage_steps

__all__ = ["SPECIALISTS", "Route", "fixed_route", "route", "triage_steps", "with_evidence"]
