"""The recurrent, stage-sharded action model family, its student, and their weights."""
