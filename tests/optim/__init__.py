"""Tests of :mod:`lopt_graphs.optim` (a package, so its helper module and test names cannot collide with
test modules of the same name in other test folders)."""
