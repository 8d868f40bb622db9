"""Replacing a pretrained network's convs by Ghost convs and checking what that saves and costs: ghostify
(:mod:`.ghostify`), rebuilding a saved result (:mod:`.rebuild`), verification (:mod:`.verify`), MAC
counting (:mod:`.macs`), a plan under a budget (:mod:`.plan`) and recovery by distillation
(:mod:`.recover`). The one place where ``ghostnet`` and
``analysis.reconstruct`` meet."""

from analysis.convert.ghostify import GhostifyError, GhostifyResult, ghostify
from analysis.convert.macs import MacsReport, count_macs
from analysis.convert.plan import ReplacementPlan, choose_plan, plan_replacement
from analysis.convert.rebuild import load_ghostified, rebuild
from analysis.convert.recover import RecoverError, RecoverResult, recover
from analysis.convert.verify import VerificationReport, verify_replacement

__all__ = ["GhostifyError", "GhostifyResult", "MacsReport", "VerificationReport", "count_macs", "ghostify",
           "load_ghostified", "rebuild", "verify_replacement"]
__all__ += ["RecoverError", "RecoverResult", "ReplacementPlan", "choose_plan", "plan_replacement", "recover"]
