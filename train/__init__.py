"""Workstation side: towers, losses, training, metrics and evaluation."""
