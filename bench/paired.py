"""The paired session's former home, kept for importers: the unit, its plan and its ratio rule are
in bench/units/session.py, its run in bench/units/session_run.py."""
from bench.units.session import AA_LABEL, THIRD_LABEL, Session, plan_sessions, round_log_ratios  # noqa: F401
