"""Benchmark commands (``lopt-vs-adam``, ``lopt-throughput``, ``lopt-step-cost``, ``lopt-step-saturation``,
``lopt-graph-cost``); each module's docstring gives its command line, ``benchmarks.suite`` holds the vs-Adam
suite."""
