"""Reusable widgets and delegates of the panel."""
