"""The ``kloros-tasks`` commands: ``main`` (the argument parser), ``up`` and its
supervisor, ``scan``, ``status``, the questions reader and its rendering,
``install-units`` and the embedded ``redis-server``.

The top of the import graph: it may import every other stage."""
