"""The shared algorithm bases: machinery every algorithm folder builds on (above ``policies/``, below the algorithms)."""
