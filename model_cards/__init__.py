"""Model cards for MAEST checkpoints (filled in by its issue)."""
