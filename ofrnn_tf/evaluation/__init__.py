"""Evaluation: multi-label metrics (CNN-RNN / ML-GCN convention) and result tables."""
