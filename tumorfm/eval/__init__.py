"""Evaluation: metrics, evaluation of predictions and the HTML report."""
