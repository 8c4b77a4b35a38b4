"""The ``tagi`` subcommands as plain functions, one module per area; :mod:`tagi.cli` maps names to them.

- :mod:`tagi.commands.train` — ``train-teachers``, ``pretrain``, ``finetune``, ``sweep``, ``run``;
- :mod:`tagi.commands.evaluate` — ``evaluate``, ``demo``;
- :mod:`tagi.commands.generate` — ``generate``, ``predict``.

A command's signature and docstring are its interface (:func:`tagi.cli.build_parser`); the library modules
below hold no CLI code.
"""
