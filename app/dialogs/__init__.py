"""Dialogs the pages open: small windows over one object (a job, a node)."""
