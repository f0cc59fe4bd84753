"""Run folders and the files in them: atomic writes, checkpoints, and the rules of a run folder."""
