"""Bare git mirrors: running git, planning and applying syncs, cross-process locks."""
