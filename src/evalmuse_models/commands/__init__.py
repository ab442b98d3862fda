"""Sub-commands of the ``evalmuse`` CLI: one module per command, each with ``register(subparsers)``.

A command module sets ``func`` (called with the parsed namespace, returns an exit code) through
``parser.set_defaults(func=...)``. Command groups (``evalmuse eval alignment``) set ``_parser`` to
the group's parser so that a bare group prints its own help.
"""
