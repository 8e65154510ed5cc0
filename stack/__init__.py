"""The whole stack on one machine: the `resonera` command (demo)."""
