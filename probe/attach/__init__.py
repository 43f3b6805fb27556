"""Attaching programs to hooks: one module per hook."""
