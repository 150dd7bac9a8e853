"""The ForagerAgent: the episode loop, prompts, collection, dedup and export of trajectories."""
