"""Evaluation: a policy's figures over an environment's tasks (`forager eval`)."""

from forager.eval.summary import SUMMARY_FILE, EvalSummary, pass_at_k, summarize, write_summary

__all__ = ["SUMMARY_FILE", "EvalSummary", "pass_at_k", "summarize", "write_summary"]
