"""Foundations every layer stands on: settings, text safety, command-line helpers, processes."""
